//! The library's error type: a libvirt error number, the libvirt error domain
//! it is reported under, and a human-readable message. The core returns
//! `Result<_, Error>`; the C boundary turns it into the thread-local last error.

/// The subset of libvirt's `virErrorNumber` values this library reports.
/// The numbers are libvirt's ABI and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ErrorCode {
    InternalError = 1,
    NoSupport = 3,
    InvalidArg = 8,
    OperationFailed = 9,
    XmlError = 27,
    NoDomain = 42,
    OperationInvalid = 55,
    ConfigUnsupported = 67,
    OperationAborted = 78,
    NoDomainBackup = 104,
}

/// libvirt's `VIR_FROM_DOMAIN`: backups are a domain feature, as snapshots are.
pub(crate) const VIR_FROM_DOMAIN: i32 = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// A libvirt `virErrorNumber` (ours, or carried over from a libvirt call).
    pub code: i32,
    /// A libvirt `virErrorDomain`.
    pub domain: i32,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code: code as i32,
            domain: VIR_FROM_DOMAIN,
            message: message.into(),
        }
    }

    pub fn is(&self, code: ErrorCode) -> bool {
        self.code == code as i32
    }

    pub fn invalid_arg(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::InvalidArg,
            format!("invalid argument: {}", message.into()),
        )
    }

    pub fn xml(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::XmlError,
            format!("XML error: {}", message.into()),
        )
    }

    pub fn no_backup(uuid: &str) -> Self {
        Self::new(
            ErrorCode::NoDomainBackup,
            format!("Domain backup not found: no domain backup with matching uuid '{uuid}'"),
        )
    }

    pub fn operation_invalid(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::OperationInvalid,
            format!("Requested operation is not valid: {}", message.into()),
        )
    }

    pub fn operation_failed(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::OperationFailed,
            format!("operation failed: {}", message.into()),
        )
    }

    pub fn aborted(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::OperationAborted,
            format!("operation aborted: {}", message.into()),
        )
    }

    /// Behaviour that belongs to a later stage of the library: fail loudly.
    pub fn not_supported_yet(what: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::NoSupport,
            format!(
                "this function is not supported by the connection driver: {} is not supported yet",
                what.into()
            ),
        )
    }

    pub fn no_support(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::NoSupport,
            format!(
                "this function is not supported by the connection driver: {}",
                message.into()
            ),
        )
    }

    /// A configuration (of the host or of the caller) the library cannot
    /// work with, as libvirt's `VIR_ERR_CONFIG_UNSUPPORTED`.
    pub fn config_unsupported(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::ConfigUnsupported,
            format!("unsupported configuration: {}", message.into()),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::InternalError,
            format!("internal error: {}", message.into()),
        )
    }

    /// An I/O failure on a named file.
    pub fn io(what: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        Self::operation_failed(format!("{what} '{}': {err}", path.display()))
    }
}

impl From<virt::error::Error> for Error {
    /// A failed libvirt call: keep its code, domain and message.
    fn from(e: virt::error::Error) -> Self {
        Error {
            code: e.code().to_raw() as i32,
            domain: e.domain().to_raw() as i32,
            message: e.message().to_string(),
        }
    }
}

/// Log, as a warning of the calling module, an error the caller can do
/// nothing more about (a clean-up after another failure, a best-effort
/// step), with what was being done: such an error is never dropped
/// unseen (see `logging`).
#[macro_export]
macro_rules! warn_if_err {
    ($result:expr, $($what:tt)+) => {
        if let Err(e) = $result {
            ::log::warn!("{}: {}", format_args!($($what)+), e);
        }
    };
}

/// As `warn_if_err!`, at debug level: for a failure that is often the
/// normal answer (a folder that still holds other files, a file already
/// gone), worth seeing only when asked.
#[macro_export]
macro_rules! debug_if_err {
    ($result:expr, $($what:tt)+) => {
        if let Err(e) = $result {
            ::log::debug!("{}: {}", format_args!($($what)+), e);
        }
    };
}

/// An I/O result where a missing file is no failure (a removal of what
/// may already be gone).
pub(crate) fn missing_ok(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
