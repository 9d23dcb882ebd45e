package autostandby

import (
	"net/netip"
	"strconv"
)

// TCPState is a conntrack TCP state, numbered as the kernel's uapi enum tcp_conntrack.
type TCPState uint8

// TCP states (uapi values; hypeman's Ignore and Retrans constants are off by one).
const (
	TCPStateNone        TCPState = 0
	TCPStateSynSent     TCPState = 1
	TCPStateSynRecv     TCPState = 2
	TCPStateEstablished TCPState = 3
	TCPStateFinWait     TCPState = 4
	TCPStateCloseWait   TCPState = 5
	TCPStateLastAck     TCPState = 6
	TCPStateTimeWait    TCPState = 7
	TCPStateClose       TCPState = 8
	TCPStateSynSent2    TCPState = 9
	// TCPStateListen is hypeman's name for SYN_SENT2 (9).
	TCPStateListen           = TCPStateSynSent2
	TCPStateIgnore  TCPState = 11
	TCPStateRetrans TCPState = 12
)

var tcpStateNames = map[TCPState]string{
	TCPStateNone: "NONE", TCPStateSynSent: "SYN_SENT", TCPStateSynRecv: "SYN_RECV",
	TCPStateEstablished: "ESTABLISHED", TCPStateFinWait: "FIN_WAIT",
	TCPStateCloseWait: "CLOSE_WAIT", TCPStateLastAck: "LAST_ACK",
	TCPStateTimeWait: "TIME_WAIT", TCPStateClose: "CLOSE", TCPStateSynSent2: "SYN_SENT2",
	TCPStateIgnore: "IGNORE", TCPStateRetrans: "RETRANS",
}

// String is conntrack's name of the state, or "UNKNOWN".
func (s TCPState) String() string {
	if name, ok := tcpStateNames[s]; ok {
		return name
	}
	return "UNKNOWN"
}

// Active reports whether a flow in this state keeps an instance awake: every state but
// NONE, TIME_WAIT and CLOSE, so unknown states err on the side of staying awake.
func (s TCPState) Active() bool {
	return s != TCPStateNone && s != TCPStateTimeWait && s != TCPStateClose
}

// IP protocol numbers.
const (
	ProtoTCP uint8 = 6
	ProtoUDP uint8 = 17
)

// FlowEventKind is what a manual flow event reports.
type FlowEventKind uint32

// Flow event kinds.
const (
	FlowNew FlowEventKind = iota
	FlowUpdate
	FlowDestroy
)

// FlowEvent is a conntrack event supplied through Manual.
type FlowEvent struct {
	// Kind is new, update or destroy.
	Kind FlowEventKind
	// Protocol is the IP protocol number (ProtoTCP, ProtoUDP).
	Protocol uint8
	// Client and Destination are the original tuple.
	Client, Destination netip.AddrPort
	// ReplySource and ReplyDestination are the reply tuple; zero values mirror the
	// original tuple (no NAT).
	ReplySource, ReplyDestination netip.AddrPort
	// Zone is the conntrack zone.
	Zone uint16
	// ID is conntrack's id of the entry.
	ID uint32
	// HasTCPState says whether TCPState is set (an update without one leaves the
	// state unchanged).
	HasTCPState bool
	// TCPState is the flow's TCP state when HasTCPState is set.
	TCPState TCPState
}

// TCPEvent builds a TCP flow event with a state and no NAT.
func TCPEvent(kind FlowEventKind, client, destination netip.AddrPort, id uint32, state TCPState) FlowEvent {
	return FlowEvent{Kind: kind, Protocol: ProtoTCP, Client: client, Destination: destination,
		ID: id, HasTCPState: true, TCPState: state}
}

func protocolName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return strconv.Itoa(int(p))
}
