//! Conntrack observation over ctnetlink: event and query sockets, kernel-side filters,
//! the zero-copy parser, and loss detection.
