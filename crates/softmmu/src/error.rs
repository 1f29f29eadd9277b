//! Linux's errno values for the requests the software MMU refuses.

use std::fmt;

/// An errno a system call of the software MMU fails with, as Linux would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Errno {
    /// `EPERM` (1).
    Perm,
    /// `EAGAIN` (11).
    Again,
    /// `ENOMEM` (12): no mapping where one is needed, or out of address space.
    NoMem,
    /// `EACCES` (13).
    Acces,
    /// `EFAULT` (14): an access the mapping does not allow.
    Fault,
    /// `EBUSY` (16).
    Busy,
    /// `EEXIST` (17): `MAP_FIXED_NOREPLACE` over an existing mapping.
    Exist,
    /// `EINVAL` (22): a malformed request.
    Inval,
}

impl Errno {
    /// The positive errno number.
    pub fn code(self) -> i32 {
        match self {
            Errno::Perm => 1,
            Errno::Again => 11,
            Errno::NoMem => 12,
            Errno::Acces => 13,
            Errno::Fault => 14,
            Errno::Busy => 16,
            Errno::Exist => 17,
            Errno::Inval => 22,
        }
    }

    /// The symbolic name, e.g. `"ENOMEM"`.
    pub fn name(self) -> &'static str {
        match self {
            Errno::Perm => "EPERM",
            Errno::Again => "EAGAIN",
            Errno::NoMem => "ENOMEM",
            Errno::Acces => "EACCES",
            Errno::Fault => "EFAULT",
            Errno::Busy => "EBUSY",
            Errno::Exist => "EEXIST",
            Errno::Inval => "EINVAL",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl std::error::Error for Errno {}

/// The result of a software-MMU system call.
pub type SysResult<T = ()> = Result<T, Errno>;
