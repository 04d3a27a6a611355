//! Rejections: why a shadow request was refused, with the HTTP-like code the
//! `.../rejected` topics carry.

/// The error classes of the AWS IoT shadow service, which cloud teams already map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    UnsupportedEncoding,
    TooManyRequests,
    Internal,
}

impl ErrorCode {
    /// The HTTP status number published in a rejection's `code` field.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedEncoding => 415,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
        }
    }
}

/// A refused request. The caller's document is untouched by construction: the
/// engine only ever reads it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?} ({}): {message}", .code.as_u16())]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_http_statuses() {
        let table = [
            (ErrorCode::BadRequest, 400),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::NotFound, 404),
            (ErrorCode::Conflict, 409),
            (ErrorCode::PayloadTooLarge, 413),
            (ErrorCode::UnsupportedEncoding, 415),
            (ErrorCode::TooManyRequests, 429),
            (ErrorCode::Internal, 500),
        ];
        for (code, status) in table {
            assert_eq!(code.as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn display_names_code_status_and_message() {
        let rejection = Rejection::new(ErrorCode::Conflict, "version 3 != 4");
        assert_eq!(rejection.to_string(), "Conflict (409): version 3 != 4");
    }
}
