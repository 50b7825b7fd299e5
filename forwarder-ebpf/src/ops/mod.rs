//! Mechanics over the packet and the maps: no decision about a flow
//! lives here, and nothing here imports `flow`.

pub mod audit;
pub mod conntrack;
pub mod csum;
pub mod fib;
pub mod frag;
pub mod parse;
pub mod rewrite;
