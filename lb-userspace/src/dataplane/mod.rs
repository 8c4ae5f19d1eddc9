//! The only code that touches aya: load, pin, attach the XDP program and program its maps.
