/* The guest's UDP service: echoes every datagram back to its sender, over IPv4 and
 * IPv6 (one dual-stack socket). Busybox has no UDP server; this is linked statically
 * into the guest's initramfs by tests/e2e/guest.sh. Usage: udp_echo PORT
 * It returns once the socket is bound (serving from a child process), so the guest's
 * init reports ready only when the service is. */
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
	char *end = NULL;
	long port = argc == 2 ? strtol(argv[1], &end, 10) : 0;
	if (argc != 2 || *end != '\0' || port < 1 || port > 65535) {
		fprintf(stderr, "usage: udp_echo PORT\n");
		return 2;
	}
	int fd = socket(AF_INET6, SOCK_DGRAM, 0);
	int off = 0;
	struct sockaddr_in6 addr = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
	if (fd < 0 || setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0 ||
	    bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		perror("udp_echo");
		return 1;
	}
	pid_t child = fork();
	if (child < 0) {
		perror("udp_echo: fork");
		return 1;
	}
	if (child > 0)
		return 0;
	char buf[2048];
	for (;;) {
		struct sockaddr_in6 from;
		socklen_t len = sizeof from;
		ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
		if (n >= 0)
			sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
	}
}
