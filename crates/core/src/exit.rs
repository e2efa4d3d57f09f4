//! Exit status: whether an error is the user's (bad options or input, exit 2) or a failure
//! while working (exit 1). Every error type the binary returns implements [`Classify`], and
//! the binary only returns [`Failure`], which is built from such a type (or from option
//! checking): a new error type cannot reach `main` without saying which it is.

/// Bad input (exit 2) as opposed to a failure while working (exit 1).
pub trait Classify {
    fn is_input_error(&self) -> bool;
}

/// An error on its way out of the binary, classified where its type is known.
#[derive(Debug)]
pub struct Failure {
    pub input: bool,
    pub error: anyhow::Error,
}

impl Failure {
    /// An error from parsing and checking options: the user's.
    pub fn options(error: anyhow::Error) -> Self {
        Failure { input: true, error }
    }

    pub fn exit_code(&self) -> u8 {
        if self.input {
            2
        } else {
            1
        }
    }
}

impl<E> From<E> for Failure
where
    E: Classify + std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        Failure {
            input: e.is_input_error(),
            error: e.into(),
        }
    }
}
