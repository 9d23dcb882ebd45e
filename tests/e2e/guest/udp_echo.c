/* The guest's UDP service: echoes every datagram back to its sender, over IPv4 and
 * IPv6 (one dual-stack socket). Busybox has no UDP server; this is linked statically
 * into the guest's initramfs by tests/e2e/guest.sh. Usage: udp_echo PORT */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: udp_echo PORT\n");
		return 2;
	}
	int fd = socket(AF_INET6, SOCK_DGRAM, 0);
	int off = 0;
	struct sockaddr_in6 addr = {.sin6_family = AF_INET6, .sin6_port = htons(atoi(argv[1]))};
	if (fd < 0 || setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0 ||
	    bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		perror("udp_echo");
		return 1;
	}
	char buf[2048];
	for (;;) {
		struct sockaddr_in6 from;
		socklen_t len = sizeof from;
		ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
		if (n >= 0)
			sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
	}
}
