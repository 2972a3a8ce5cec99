//! Response status codes the server sends.

/// A response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 100 Continue (interim).
    Continue,
    /// 200 OK
    Ok,
    /// 400 Bad Request
    BadRequest,
    /// 404 Not Found
    NotFound,
    /// 405 Method Not Allowed
    MethodNotAllowed,
    /// 413 Content Too Large
    PayloadTooLarge,
    /// 417 Expectation Failed
    ExpectationFailed,
    /// 431 Request Header Fields Too Large
    HeaderFieldsTooLarge,
    /// 501 Not Implemented
    NotImplemented,
    /// 502 Bad Gateway (a proxy's upstream failed or answered nonsense)
    BadGateway,
    /// 503 Service Unavailable
    ServiceUnavailable,
    /// 504 Gateway Timeout (a proxy's upstream did not answer in time)
    GatewayTimeout,
    /// 505 HTTP Version Not Supported
    VersionNotSupported,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Status::Continue => 100,
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::PayloadTooLarge => 413,
            Status::ExpectationFailed => 417,
            Status::HeaderFieldsTooLarge => 431,
            Status::NotImplemented => 501,
            Status::BadGateway => 502,
            Status::ServiceUnavailable => 503,
            Status::GatewayTimeout => 504,
            Status::VersionNotSupported => 505,
        }
    }

    /// The status line, CRLF included.
    pub fn line(self) -> &'static [u8] {
        match self {
            Status::Continue => b"HTTP/1.1 100 Continue\r\n",
            Status::Ok => b"HTTP/1.1 200 OK\r\n",
            Status::BadRequest => b"HTTP/1.1 400 Bad Request\r\n",
            Status::NotFound => b"HTTP/1.1 404 Not Found\r\n",
            Status::MethodNotAllowed => b"HTTP/1.1 405 Method Not Allowed\r\n",
            Status::PayloadTooLarge => b"HTTP/1.1 413 Content Too Large\r\n",
            Status::ExpectationFailed => b"HTTP/1.1 417 Expectation Failed\r\n",
            Status::HeaderFieldsTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            Status::NotImplemented => b"HTTP/1.1 501 Not Implemented\r\n",
            Status::BadGateway => b"HTTP/1.1 502 Bad Gateway\r\n",
            Status::ServiceUnavailable => b"HTTP/1.1 503 Service Unavailable\r\n",
            Status::GatewayTimeout => b"HTTP/1.1 504 Gateway Timeout\r\n",
            Status::VersionNotSupported => b"HTTP/1.1 505 HTTP Version Not Supported\r\n",
        }
    }

    /// A short plain-text body for error responses.
    pub fn reason_body(self) -> &'static [u8] {
        match self {
            Status::Continue | Status::Ok => b"",
            Status::BadRequest => b"Bad Request\n",
            Status::NotFound => b"Not Found\n",
            Status::MethodNotAllowed => b"Method Not Allowed\n",
            Status::PayloadTooLarge => b"Content Too Large\n",
            Status::ExpectationFailed => b"Expectation Failed\n",
            Status::HeaderFieldsTooLarge => b"Request Header Fields Too Large\n",
            Status::NotImplemented => b"Not Implemented\n",
            Status::BadGateway => b"Bad Gateway\n",
            Status::ServiceUnavailable => b"Service Unavailable\n",
            Status::GatewayTimeout => b"Gateway Timeout\n",
            Status::VersionNotSupported => b"HTTP Version Not Supported\n",
        }
    }
}
