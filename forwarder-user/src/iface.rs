//! Interface names → indices.

use std::ffi::CString;

use crate::error::{Error, Result};

/// The kernel's index of interface `name`.
pub fn index(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| Error::UnknownInterface(name.to_string()))?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 { Err(Error::UnknownInterface(name.to_string())) } else { Ok(idx) }
}
