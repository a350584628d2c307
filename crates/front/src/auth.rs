//! API tokens: with `API_TOKENS_FILE` set, `/api` answers only requests that carry
//! `Authorization: Bearer <token>` with a token of that file; `read` tokens may GET, `write`
//! tokens may GET and POST. The file is read at start (a malformed one stops the server) and again
//! on SIGHUP (a malformed one keeps the tokens in force).
//!
//! The check runs before the handlers parse anything, so a request without a valid token gets
//! `401` (or `403`) whatever its body, and never reaches RabbitMQ. No token is ever written
//! anywhere: errors about the file name its path and the line, never the line's text, and
//! [`Tokens`]' `Debug` shows only counts.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `GET /api`.
    Read,
    /// `GET /api` and `POST /api`.
    Write,
}

/// The tokens of one reading of the file.
pub struct Tokens {
    entries: Vec<(Scope, Vec<u8>)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (read, write) = self.counts();
        write!(f, "Tokens {{ read: {read}, write: {write} }}")
    }
}

/// Why the file was refused. Never holds any of its text: a line may be a token.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("cannot read the API tokens file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API tokens file {}, line {line}: {problem}", .path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: &'static str,
    },
}

impl Tokens {
    /// Parses the file's contents: `<scope> <token>` per line; blank lines and lines starting
    /// with `#` are skipped. Returns the first bad line's number and what is wrong with it.
    pub fn parse(text: &[u8]) -> Result<Self, (usize, &'static str)> {
        let mut entries = Vec::new();
        for (index, line) in text.split(|&byte| byte == b'\n').enumerate() {
            let number = index + 1;
            let line = std::str::from_utf8(line).map_err(|_| (number, "not UTF-8"))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let scope = match fields.next() {
                Some("read") => Scope::Read,
                Some("write") => Scope::Write,
                _ => return Err((number, "the scope must be 'read' or 'write'")),
            };
            let Some(token) = fields.next() else {
                return Err((number, "no token after the scope"));
            };
            if fields.next().is_some() {
                return Err((number, "more than '<scope> <token>' on the line"));
            }
            // What an `Authorization` header can carry; any other token could never match.
            if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
                return Err((number, "the token must be printable ASCII"));
            }
            entries.push((scope, token.as_bytes().to_vec()));
        }
        Ok(Self { entries })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, TokensFileError> {
        let text = std::fs::read(path).map_err(|source| TokensFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, problem)| TokensFileError::Line {
            path: path.to_owned(),
            line,
            problem,
        })
    }

    /// How many `read` and `write` tokens there are.
    pub fn counts(&self) -> (usize, usize) {
        let write = self.entries.iter().filter(|(s, _)| *s == Scope::Write);
        let write = write.count();
        (self.entries.len() - write, write)
    }

    /// The scope of `presented`, if it is one of the tokens (`write` if listed under both).
    ///
    /// Compared with every token, each in full: how long this takes depends on the number and
    /// lengths of the tokens, never on how much of one a guess got right.
    pub fn scope_of(&self, presented: &[u8]) -> Option<Scope> {
        let (mut read, mut write) = (false, false);
        for (scope, token) in &self.entries {
            let same = same_bytes(token, presented);
            // `&` and `|`, not `&&` and `||`: no branch on a comparison's result.
            read |= same & (*scope == Scope::Read);
            write |= same & (*scope == Scope::Write);
        }
        match (read, write) {
            (_, true) => Some(Scope::Write),
            (true, false) => Some(Scope::Read),
            (false, false) => None,
        }
    }
}

/// Equality in time that depends on the lengths only: every byte of `presented` is compared,
/// and the differences are gathered before one test at the end.
fn same_bytes(expected: &[u8], presented: &[u8]) -> bool {
    let mut difference = expected.len() ^ presented.len();
    for (index, byte) in presented.iter().enumerate() {
        let other = expected.get(index).copied().unwrap_or(0);
        difference |= usize::from(byte ^ other);
    }
    std::hint::black_box(difference) == 0
}

/// The file and the tokens now in force, which SIGHUP replaces.
pub struct ApiTokens {
    path: PathBuf,
    current: RwLock<Arc<Tokens>>,
}

impl ApiTokens {
    /// Reads the file; a missing, unreadable or malformed one is an error, which stops the server.
    pub fn load(path: PathBuf) -> Result<Self, TokensFileError> {
        let tokens = Tokens::load(&path)?;
        log_loaded(&path, &tokens);
        Ok(Self {
            path,
            current: RwLock::new(Arc::new(tokens)),
        })
    }

    /// Reads the file again: its tokens replace the ones in force, unless it cannot be read or is
    /// malformed, in which case the old ones stay and the log says why.
    pub fn reload(&self) {
        match Tokens::load(&self.path) {
            Ok(tokens) => {
                log_loaded(&self.path, &tokens);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
            }
            Err(err) => tracing::error!(
                error = %err,
                "kept the API tokens in force: the file cannot be used"
            ),
        }
    }

    fn current(&self) -> Arc<Tokens> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn log_loaded(path: &Path, tokens: &Tokens) {
    let (read, write) = tokens.counts();
    tracing::info!(file = %path.display(), read, write, "loaded the API tokens");
    if read + write == 0 {
        tracing::warn!(file = %path.display(), "the API tokens file holds no token: every /api request gets 401");
    }
}

/// Re-reads the tokens file on every SIGHUP, until the task is aborted.
pub async fn reload_on_hangup(tokens: Arc<ApiTokens>, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received, reloading the API tokens");
        tokens.reload();
    }
}

/// Middleware on `/api`: lets a request through only with a token of the needed scope; without
/// `API_TOKENS_FILE`, lets every request through.
pub async fn require_token(
    State(tokens): State<Option<Arc<ApiTokens>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(tokens) = &tokens else {
        return next.run(request).await;
    };
    let scope = bearer_token(request.headers()).and_then(|token| tokens.current().scope_of(token));
    let reads_only = matches!(*request.method(), Method::GET | Method::HEAD);
    match scope {
        None => ApiError::Unauthorized.into_response(),
        Some(Scope::Read) if !reads_only => ApiError::ReadOnlyToken.into_response(),
        Some(_) => next.run(request).await,
    }
}

/// The token of the one `Authorization: Bearer <token>` header (the scheme in any case).
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn parse(text: &str) -> Result<Tokens, (usize, &'static str)> {
        Tokens::parse(text.as_bytes())
    }

    #[test]
    fn a_file_of_scopes_and_tokens_with_comments_and_blank_lines_parses() {
        let tokens = parse("# readers\nread r-1\n\n  \r\nwrite w-1\r\n  # x\nread\tr-2\n").unwrap();

        assert_eq!(tokens.counts(), (2, 1));
        assert_eq!(tokens.scope_of(b"r-1"), Some(Scope::Read));
        assert_eq!(tokens.scope_of(b"r-2"), Some(Scope::Read));
        assert_eq!(tokens.scope_of(b"w-1"), Some(Scope::Write));
        assert_eq!(tokens.scope_of(b"w-"), None);
        assert_eq!(tokens.scope_of(b"w-12"), None);
        assert_eq!(tokens.scope_of(b"W-1"), None);
        assert_eq!(tokens.scope_of(b""), None);
        assert_eq!(parse("").unwrap().counts(), (0, 0));
    }

    #[test]
    fn a_token_under_both_scopes_may_write() {
        let tokens = parse("read t\nwrite t\n").unwrap();
        assert_eq!(tokens.scope_of(b"t"), Some(Scope::Write));
    }

    #[test]
    fn each_malformed_line_is_named_by_its_number() {
        for (text, line) in [
            ("admin secret-1", 1),
            ("read ok\nREAD secret-1", 2),
            ("# c\n\nwrite", 3),
            ("read   ", 1),
            ("read secret-1 extra", 1),
            ("secret-1 read", 1),
            ("read sécret", 1),
            ("read ok\nwrite \u{ff}", 2),
        ] {
            let (number, _) = parse(text).expect_err(text);
            assert_eq!(number, line, "{text:?}");
        }
        let err = Tokens::load(Path::new("/nonexistent/tokens")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tokens"), "{err}");
    }

    #[test]
    fn errors_and_debug_never_show_a_token() {
        let path = std::env::temp_dir().join(format!("kv-tokens-{}", std::process::id()));
        std::fs::write(&path, "read secret-1\nsecret-2 write\n").unwrap();
        let err = Tokens::load(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        let tokens = parse("read secret-1").unwrap();

        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(!format!("{tokens:?}").contains("secret"));
    }

    #[test]
    fn bytes_are_the_same_only_when_equal_in_full() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
        assert!(!same_bytes(b"ab", b"abc"));
        assert!(!same_bytes(b"ab", b"ab\0"));
        assert!(same_bytes(b"", b""));
        assert!(!same_bytes(b"", b"\0"));
    }

    #[test]
    fn only_one_bearer_header_carries_a_token() {
        let with = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            }
            bearer_token(&headers).map(<[u8]>::to_vec)
        };
        assert_eq!(with(&["Bearer t-1"]), Some(b"t-1".to_vec()));
        assert_eq!(with(&["bearer  t-1 "]), Some(b"t-1".to_vec()));
        assert_eq!(with(&[]), None);
        assert_eq!(with(&["Bearer"]), None);
        assert_eq!(with(&["Bearer "]), None);
        assert_eq!(with(&["Basic dXNlcjpwYXNz"]), None);
        assert_eq!(with(&["t-1"]), None);
        assert_eq!(with(&["Bearer t-1", "Bearer t-1"]), None);
    }
}
