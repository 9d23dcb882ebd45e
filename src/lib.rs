//! libautostandby: decides when a microVM has stopped serving inbound traffic and should
//! be put into Standby, and when traffic arrives for one that is in Standby, from the
//! Linux conntrack table.
//!
//! Layers, each using only those below it:
//! - [`ffi`]: the C ABI, on top of the [`controller`];
//! - [`controller`]: the running threads, which join the two layers below;
//! - [`conntrack`] (netlink I/O) and [`engine`] (pure state machine): siblings that do
//!   not use each other; of the crate, conntrack uses [`flow`] only, the engine uses
//!   [`flow`] and [`policy`];
//! - [`policy`], [`flow`]: plain data.

#![warn(missing_docs)]
// Every unsafe block states why it is sound, next to the code it covers.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod conntrack;
pub mod controller;
pub mod engine;
pub mod ffi;
pub mod flow;
pub mod policy;

/// The library's version (the crate version); the C ABI version is
/// [`ffi::AUTOSTANDBY_ABI_VERSION`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
