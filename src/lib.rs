//! libautostandby: decides when a microVM has stopped serving inbound traffic and should
//! be put into Standby, and when traffic arrives for one that is in Standby, from the
//! Linux conntrack table.
//!
//! Layers, each using only those below it: [`ffi`] (C ABI) → [`controller`] (threads) →
//! [`conntrack`] (netlink I/O) → [`engine`] (pure state machine) → [`policy`], [`flow`].

#![warn(missing_docs)]
// Every unsafe block states why it is sound, next to the code it covers.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod conntrack;
pub mod controller;
pub mod engine;
pub mod ffi;
pub mod flow;
pub mod policy;
