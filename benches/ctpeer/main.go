// Command ctpeer dumps and classifies the IPv4 conntrack table with
// github.com/vishvananda/netlink, the library hypeman uses today. It is the Go peer in
// benches/conntrack.sh.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
)

// tcpFinished is true for the TCP states in which a connection is over:
// NONE, TIME_WAIT and CLOSE (uapi enum tcp_conntrack).
func tcpFinished(state uint8) bool {
	return state == 0 || state == 7 || state == 8
}

func main() {
	repeat := 1
	if len(os.Args) > 1 {
		if n, err := strconv.Atoi(os.Args[1]); err == nil && n > 0 {
			repeat = n
		}
	}
	best := time.Duration(1<<63 - 1)
	var total, live, finished int
	for i := 0; i < repeat; i++ {
		start := time.Now()
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ctpeer:", err)
			os.Exit(1)
		}
		total, live, finished = len(flows), 0, 0
		for _, f := range flows {
			if tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP); ok && tcpFinished(tcp.State) {
				finished++
			} else {
				live++
			}
		}
		if d := time.Since(start); d < best {
			best = d
		}
	}
	fmt.Printf("entries=%d live=%d finished=%d seconds=%.4f\n", total, live, finished, best.Seconds())
}
