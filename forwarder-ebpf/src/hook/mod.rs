//! The hooks: each carries out the pipeline's verdict the way it can (XDP
//! by hand and through the devmap, TC with the kernel's helpers), and
//! [`txwatch`] watches the kernel refuse our XDP redirects.

pub mod tc;
pub mod toobig;
pub mod txwatch;
pub mod xdp;
