//! The running system: observer threads feeding the engine thread, decisions queued for
//! the host, and status snapshots readers never wait for.
