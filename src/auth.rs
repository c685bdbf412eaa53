//! Role tokens (who may call what): the token sets of the three roles, where
//! they come from (`--client-token` and friends, `--token-file`), their
//! reload on SIGHUP, and the one decision "may this caller act in this
//! role?".
//!
//! Nothing here knows HTTP or gRPC: a face passes the role its endpoint
//! belongs to, the presented credential and whether the peer is on loopback,
//! and maps the [`AuthError`] to its own status codes (the HTTP mapping is in
//! `api::error`).
//!
//! Tokens are kept only as SHA-256 digests and a presented token is compared
//! with every digest of every role in constant time, so neither a token's
//! bytes nor its length can be learnt from timing. No token ever appears in a
//! log line or an error message: [`Secret`]'s `Debug` is redacted and the
//! token-file errors name line numbers, never contents.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// Shortest token that does not draw a start-up warning.
pub const SHORT_TOKEN_WARNING: usize = 16;

/// A caller's role (docs/api.md, "Who may call what").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Submits jobs and reads their results: `/api/submit`, `/api/jobs…`.
    Client,
    /// Takes jobs and posts results: `/api/worker/…` (and the gRPC service).
    Worker,
    /// Everything, including `/api/admin/…`.
    Admin,
}

impl Role {
    /// All roles, in the order of [`Role::index`].
    pub const ALL: [Role; 3] = [Role::Client, Role::Worker, Role::Admin];

    /// The role's name as written in a token file and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }

    fn index(self) -> usize {
        match self {
            Role::Client => 0,
            Role::Worker => 1,
            Role::Admin => 2,
        }
    }

    /// The role an HTTP path (or route template such as `/api/jobs/{id}`)
    /// belongs to, by prefix (whole path segments):
    /// `/api/submit` and `/api/jobs…` → client, `/api/worker/…` → worker,
    /// `/api/admin/…` → admin. `None` for open paths (`/health`, `/metrics`,
    /// `/openapi.json`, the dashboard page) and unknown ones.
    pub fn for_http_path(path: &str) -> Option<Role> {
        fn under(path: &str, prefix: &str) -> bool {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }
        if under(path, "/api/submit") || under(path, "/api/jobs") {
            Some(Role::Client)
        } else if under(path, "/api/worker") {
            Some(Role::Worker)
        } else if under(path, "/api/admin") {
            Some(Role::Admin)
        } else {
            None
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "client" => Ok(Role::Client),
            "worker" => Ok(Role::Worker),
            "admin" => Ok(Role::Admin),
            _ => Err(()),
        }
    }
}

/// Why a caller may not act in a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The role needs a token and none was presented (HTTP `401`).
    #[error("this endpoint needs a {0} token: send `Authorization: Bearer <token>`")]
    Missing(Role),
    /// The credential is not `Bearer <token>` (HTTP `401`).
    #[error("malformed Authorization header: expected `Bearer <token>`")]
    Malformed,
    /// A token that belongs to no role (HTTP `401`).
    #[error("unknown token")]
    Unknown,
    /// A valid token of another role (HTTP `403`).
    #[error("this token may not call {0} endpoints")]
    WrongRole(Role),
    /// Admin endpoints without an admin token set, from a non-loopback peer
    /// (HTTP `403`).
    #[error("admin endpoints answer only loopback clients while no admin token is set")]
    LoopbackOnly,
}

impl AuthError {
    /// The caller is not authenticated (`401` + `WWW-Authenticate: Bearer`),
    /// as opposed to authenticated but not allowed (`403`).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Missing(_) | AuthError::Malformed | AuthError::Unknown
        )
    }
}

/// The token in a `Bearer <token>` credential (an HTTP `Authorization`
/// header value, or gRPC `authorization` metadata). The scheme is
/// case-insensitive; the token is one or more visible ASCII characters.
///
/// # Errors
/// [`AuthError::Malformed`]: another scheme, no token, or bytes that are not
/// visible ASCII.
pub fn parse_bearer(value: &[u8]) -> Result<&str, AuthError> {
    let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed)?;
    let (scheme, rest) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = rest.trim_start_matches(' ');
    if is_token(token) {
        Ok(token)
    } else {
        Err(AuthError::Malformed)
    }
}

/// One or more visible ASCII characters (what a header value can carry
/// unchanged, without spaces).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A token as given on the command line or in the environment. Its `Debug`
/// and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The token itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if is_token(s) {
            Ok(Secret(s.to_owned()))
        } else {
            Err("a token must be one or more visible ASCII characters, without spaces".into())
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the tokens come from: the flags (fixed for the process's life) and
/// an optional token file (re-read by [`Auth::reload`]).
#[derive(Debug, Clone, Default)]
pub struct TokenSources {
    /// `--client-token` (repeatable) / `JOBQ_CLIENT_TOKEN`.
    pub client: Vec<Secret>,
    /// `--worker-token` / `JOBQ_WORKER_TOKEN`.
    pub worker: Vec<Secret>,
    /// `--admin-token` / `JOBQ_ADMIN_TOKEN`.
    pub admin: Vec<Secret>,
    /// `--token-file` / `JOBQ_TOKEN_FILE`.
    pub file: Option<PathBuf>,
}

/// A token set could not be loaded. The messages name the file and line,
/// never a token.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The token file could not be read.
    #[error("cannot read token file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message; not a `source`, so it is not printed twice).
        error: std::io::Error,
    },
    /// A line of the token file is not `ROLE TOKEN`.
    #[error("token file {path}, line {line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, without the line's contents.
        reason: &'static str,
    },
    /// One token is configured for two roles, so a caller's role would be
    /// ambiguous.
    #[error("the same token is configured for the {0} and {1} roles")]
    SharedToken(Role, Role),
}

/// How many distinct tokens each role has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenCounts {
    /// Client tokens.
    pub client: usize,
    /// Worker tokens.
    pub worker: usize,
    /// Admin tokens.
    pub admin: usize,
}

impl fmt::Display for TokenCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client: {}, worker: {}, admin: {}",
            self.client, self.worker, self.admin
        )
    }
}

/// A token's SHA-256 digest: all digests have one length, so comparing them
/// says nothing about a token's length.
type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The digests of every role's tokens at one moment.
#[derive(Default)]
struct TokenSet {
    /// Indexed by [`Role::index`]; each list has no duplicates.
    roles: [Vec<TokenDigest>; 3],
}

impl TokenSet {
    fn add(&mut self, role: Role, token: &str) -> Result<(), LoadError> {
        let d = digest(token);
        for other in Role::ALL {
            if other != role && self.roles[other.index()].contains(&d) {
                return Err(LoadError::SharedToken(other, role));
            }
        }
        let list = &mut self.roles[role.index()];
        if !list.contains(&d) {
            list.push(d);
        }
        Ok(())
    }

    fn has(&self, role: Role) -> bool {
        !self.roles[role.index()].is_empty()
    }

    fn counts(&self) -> TokenCounts {
        TokenCounts {
            client: self.roles[0].len(),
            worker: self.roles[1].len(),
            admin: self.roles[2].len(),
        }
    }

    /// Which roles `token` belongs to, as a bit per [`Role::index`]. Every
    /// digest is compared, without an early exit, so the time taken depends
    /// only on how many tokens are configured.
    fn roles_of(&self, token: &str) -> u8 {
        let d = digest(token);
        let mut bits = 0u8;
        for role in Role::ALL {
            let mut hit = Choice::from(0);
            for known in &self.roles[role.index()] {
                hit |= known.ct_eq(&d);
            }
            bits |= hit.unwrap_u8() << role.index();
        }
        bits
    }
}

/// Parses a token file: one `ROLE TOKEN` per line (role `client`, `worker`
/// or `admin`, then whitespace, then the token); blank lines and lines whose
/// first non-blank character is `#` are ignored. A role may have any number
/// of tokens, all valid at once (rotation: add the new one, reload, move the
/// callers over, remove the old one, reload).
fn parse_file(path: &Path, text: &str, into: &mut TokenSet) -> Result<(), LoadError> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |reason| LoadError::Syntax {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let mut fields = line.split_whitespace();
        let (Some(role), Some(token), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(syntax(
                "expected `ROLE TOKEN` (two fields separated by whitespace)",
            ));
        };
        let role: Role = role
            .parse()
            .map_err(|()| syntax("the role must be client, worker or admin"))?;
        if !is_token(token) {
            return Err(syntax("a token must be visible ASCII characters"));
        }
        warn_if_short(role, token, "token file");
        into.add(role, token)?;
    }
    Ok(())
}

fn warn_if_short(role: Role, token: &str, origin: &str) {
    if token.len() < SHORT_TOKEN_WARNING {
        tracing::warn!(
            role = role.name(),
            origin,
            "a {role} token is shorter than {SHORT_TOKEN_WARNING} characters; use a long random one (e.g. `openssl rand -hex 32`)"
        );
    }
}

/// Loads the token sets of `sources`.
fn load(sources: &TokenSources, warn: bool) -> Result<TokenSet, LoadError> {
    let mut set = TokenSet::default();
    for (role, list) in [
        (Role::Client, &sources.client),
        (Role::Worker, &sources.worker),
        (Role::Admin, &sources.admin),
    ] {
        for t in list {
            if warn {
                warn_if_short(role, t.expose(), "flag");
            }
            set.add(role, t.expose())?;
        }
    }
    if let Some(path) = &sources.file {
        let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
            path: path.clone(),
            error,
        })?;
        warn_if_readable_by_others(path);
        parse_file(path, &text, &mut set)?;
    }
    Ok(set)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the token file is readable by other users; `chmod 600` it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// The server's role tokens: a cheap-clone handle shared by every face
/// (HTTP, gRPC) and the SIGHUP handler. Readers never block: a reload swaps
/// in a whole new set.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the tokens come from; the file part is re-read on reload.
    sources: TokenSources,
    /// The tokens in force.
    current: ArcSwap<TokenSet>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.counts())
            .field("file", &self.inner.sources.file)
            .finish()
    }
}

impl Auth {
    /// No tokens: every role is open, admin endpoints are loopback-only.
    pub fn open() -> Auth {
        Self::with(TokenSources::default(), TokenSet::default())
    }

    fn with(sources: TokenSources, set: TokenSet) -> Auth {
        Auth {
            inner: Arc::new(Inner {
                sources,
                current: ArcSwap::from_pointee(set),
            }),
        }
    }

    /// Loads the tokens of `sources` (reading the token file, if any).
    ///
    /// # Errors
    /// The token file cannot be read or has a malformed line, or one token
    /// is given for two roles.
    pub fn load(sources: TokenSources) -> Result<Auth, LoadError> {
        let set = load(&sources, true)?;
        Ok(Self::with(sources, set))
    }

    /// Re-reads the token file and swaps the new set in; requests under way
    /// and open connections are not affected. The flags' tokens stay.
    ///
    /// # Errors
    /// As [`Auth::load`]; the tokens in force then stay as they were (a
    /// broken file never opens the server up).
    pub fn reload(&self) -> Result<TokenCounts, LoadError> {
        let set = load(&self.inner.sources, false)?;
        let counts = set.counts();
        self.inner.current.store(Arc::new(set));
        Ok(counts)
    }

    /// How many tokens each role has now.
    pub fn counts(&self) -> TokenCounts {
        self.inner.current.load().counts()
    }

    /// Whether calls in `role` need a token now. Without one, a client or
    /// worker role is open to anyone; the admin role to loopback peers.
    pub fn requires_token(&self, role: Role) -> bool {
        self.inner.current.load().has(role)
    }

    /// May a caller presenting `bearer` (the token of a `Bearer` credential,
    /// `None` when none was sent) from a loopback peer or not act in `role`?
    /// The admin token is accepted for every role.
    ///
    /// # Errors
    /// [`AuthError::Missing`] or [`AuthError::Unknown`] (unauthenticated),
    /// [`AuthError::WrongRole`] (a token of another role),
    /// [`AuthError::LoopbackOnly`] (admin, no admin token set, a remote peer).
    pub fn check(
        &self,
        role: Role,
        bearer: Option<&str>,
        peer_is_loopback: bool,
    ) -> Result<(), AuthError> {
        self.decide(role, peer_is_loopback, || {
            bearer.ok_or(AuthError::Missing(role))
        })
    }

    /// As [`Auth::check`], given the raw credential (`Authorization` header
    /// value or `authorization` metadata, `None` when absent). A malformed
    /// credential matters only where a token is needed.
    ///
    /// # Errors
    /// As [`Auth::check`], and [`AuthError::Malformed`].
    pub fn check_credential(
        &self,
        role: Role,
        credential: Option<&[u8]>,
        peer_is_loopback: bool,
    ) -> Result<(), AuthError> {
        self.decide(role, peer_is_loopback, || match credential {
            None => Err(AuthError::Missing(role)),
            Some(v) => parse_bearer(v),
        })
    }

    fn decide<'a>(
        &self,
        role: Role,
        peer_is_loopback: bool,
        token: impl FnOnce() -> Result<&'a str, AuthError>,
    ) -> Result<(), AuthError> {
        let set = self.inner.current.load();
        if !set.has(role) {
            // A role without a token is open (the admin role to loopback
            // peers only), even when other roles have tokens.
            return if role == Role::Admin && !peer_is_loopback {
                Err(AuthError::LoopbackOnly)
            } else {
                Ok(())
            };
        }
        let bits = set.roles_of(token()?);
        let allowed = (1 << role.index()) | (1 << Role::Admin.index());
        if bits & allowed != 0 {
            Ok(())
        } else if bits != 0 {
            Err(AuthError::WrongRole(role))
        } else {
            Err(AuthError::Unknown)
        }
    }

    /// The client and worker roles that anyone who can reach the server may
    /// act in (no token set), for the start-up warning. (The admin role is
    /// never open to remote peers: without an admin token it is loopback-only.)
    pub fn open_roles(&self) -> Vec<Role> {
        let set = self.inner.current.load();
        [Role::Client, Role::Worker]
            .into_iter()
            .filter(|r| !set.has(*r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(v: &[&str]) -> Vec<Secret> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn auth(client: &[&str], worker: &[&str], admin: &[&str]) -> Auth {
        Auth::load(TokenSources {
            client: secrets(client),
            worker: secrets(worker),
            admin: secrets(admin),
            file: None,
        })
        .unwrap()
    }

    #[test]
    fn paths_map_to_roles_by_whole_segments() {
        for (path, role) in [
            ("/api/submit", Some(Role::Client)),
            ("/api/jobs", Some(Role::Client)),
            ("/api/jobs/123", Some(Role::Client)),
            ("/api/jobs/123/events", Some(Role::Client)),
            ("/api/jobs/{id}", Some(Role::Client)),
            ("/api/worker/heartbeat/{id}", Some(Role::Worker)),
            ("/api/worker/poll", Some(Role::Worker)),
            ("/api/worker/complete/1", Some(Role::Worker)),
            ("/api/admin/stats", Some(Role::Admin)),
            ("/api/admin", Some(Role::Admin)),
            ("/api/submitx", None),
            ("/api/jobsx", None),
            ("/health", None),
            ("/metrics", None),
            ("/openapi.json", None),
            ("/", None),
        ] {
            assert_eq!(Role::for_http_path(path), role, "{path}");
        }
    }

    #[test]
    fn bearer_credentials_are_parsed_strictly() {
        assert_eq!(parse_bearer(b"Bearer abc"), Ok("abc"));
        assert_eq!(parse_bearer(b"bearer  abc"), Ok("abc"));
        assert_eq!(parse_bearer(b"BEARER a.b-c_d~e+f/g="), Ok("a.b-c_d~e+f/g="));
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Basic abc",
            b"abc",
            b"Bearer a b",
            b"Bearer \xff",
            b"",
        ] {
            assert_eq!(parse_bearer(bad), Err(AuthError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn no_tokens_means_open_roles_and_loopback_only_admin() {
        let a = Auth::open();
        for role in [Role::Client, Role::Worker] {
            assert_eq!(a.check(role, None, false), Ok(()));
            assert_eq!(a.check(role, Some("junk"), false), Ok(()));
        }
        assert_eq!(a.check(Role::Admin, None, true), Ok(()));
        assert_eq!(
            a.check(Role::Admin, None, false),
            Err(AuthError::LoopbackOnly)
        );
        assert_eq!(a.open_roles(), vec![Role::Client, Role::Worker]);
    }

    #[test]
    fn each_role_needs_its_token_and_admin_is_accepted_everywhere() {
        let a = auth(&["c-token"], &["w-token"], &["a-token"]);
        use AuthError::*;
        for loopback in [true, false] {
            let check = |role, t| a.check(role, t, loopback);
            assert_eq!(check(Role::Client, Some("c-token")), Ok(()));
            assert_eq!(check(Role::Client, Some("a-token")), Ok(()));
            assert_eq!(
                check(Role::Client, Some("w-token")),
                Err(WrongRole(Role::Client))
            );
            assert_eq!(check(Role::Client, None), Err(Missing(Role::Client)));
            assert_eq!(check(Role::Client, Some("nope")), Err(Unknown));
            assert_eq!(check(Role::Worker, Some("w-token")), Ok(()));
            assert_eq!(check(Role::Worker, Some("a-token")), Ok(()));
            assert_eq!(
                check(Role::Worker, Some("c-token")),
                Err(WrongRole(Role::Worker))
            );
            assert_eq!(check(Role::Admin, Some("a-token")), Ok(()));
            assert_eq!(
                check(Role::Admin, Some("c-token")),
                Err(WrongRole(Role::Admin))
            );
            assert_eq!(
                check(Role::Admin, Some("w-token")),
                Err(WrongRole(Role::Admin))
            );
            assert_eq!(check(Role::Admin, None), Err(Missing(Role::Admin)));
        }
        assert!(a.open_roles().is_empty());
    }

    #[test]
    fn a_role_without_a_token_stays_open() {
        let a = auth(&["c-token"], &[], &[]);
        assert_eq!(a.check(Role::Worker, None, false), Ok(()));
        assert_eq!(
            a.check(Role::Client, None, false),
            Err(AuthError::Missing(Role::Client))
        );
        // No admin token: admin stays loopback-only, whatever is presented.
        assert_eq!(a.check(Role::Admin, None, true), Ok(()));
        assert_eq!(
            a.check(Role::Admin, Some("c-token"), false),
            Err(AuthError::LoopbackOnly)
        );
        // Only an admin token: client and worker roles are open, admin needs it.
        let a = auth(&[], &[], &["a-token"]);
        assert_eq!(a.check(Role::Client, None, false), Ok(()));
        assert_eq!(
            a.check(Role::Admin, None, true),
            Err(AuthError::Missing(Role::Admin))
        );
        assert_eq!(a.check(Role::Admin, Some("a-token"), false), Ok(()));
    }

    #[test]
    fn a_malformed_credential_matters_only_where_a_token_is_needed() {
        let a = auth(&["c-token"], &[], &[]);
        assert_eq!(
            a.check_credential(Role::Client, Some(b"Basic x"), true),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            a.check_credential(Role::Worker, Some(b"Basic x"), true),
            Ok(())
        );
        assert_eq!(
            a.check_credential(Role::Client, Some(b"Bearer c-token"), true),
            Ok(())
        );
        assert_eq!(
            a.check_credential(Role::Client, None, true),
            Err(AuthError::Missing(Role::Client))
        );
    }

    #[test]
    fn token_files_are_parsed_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# rotation in progress\n\nclient old-client\n  client\tnew-client  \nworker w1\n",
        )
        .unwrap();
        let a = Auth::load(TokenSources {
            admin: secrets(&["flag-admin"]),
            file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            a.counts(),
            TokenCounts {
                client: 2,
                worker: 1,
                admin: 1
            }
        );
        assert_eq!(a.check(Role::Client, Some("old-client"), false), Ok(()));
        assert_eq!(a.check(Role::Client, Some("new-client"), false), Ok(()));

        std::fs::write(&path, "client new-client\n").unwrap();
        let counts = a.reload().unwrap();
        assert_eq!(counts.client, 1);
        assert_eq!(counts.worker, 0);
        assert_eq!(
            a.check(Role::Client, Some("old-client"), false),
            Err(AuthError::Unknown)
        );
        assert_eq!(a.check(Role::Worker, None, false), Ok(()));
        // The flag's admin token survives reloads.
        assert_eq!(a.check(Role::Admin, Some("flag-admin"), false), Ok(()));

        // A broken file keeps the tokens in force.
        std::fs::write(&path, "client new-client\nsecret-without-role\n").unwrap();
        let err = a.reload().unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("secret-without-role"), "{err}");
        assert_eq!(a.check(Role::Client, Some("new-client"), false), Ok(()));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(a.reload(), Err(LoadError::Read { .. })));
        assert_eq!(a.counts().client, 1);
    }

    #[test]
    fn file_errors_never_show_a_token() {
        let p = Path::new("t");
        for (text, line) in [
            ("clinet s3cr3t-value\n", 1),
            ("client\n", 1),
            ("# ok\nclient s3cr3t-value extra\n", 2),
            ("s3cr3t-value client\n", 1),
        ] {
            let err = parse_file(p, text, &mut TokenSet::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("line {line}")), "{err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }

    #[test]
    fn one_token_for_two_roles_is_refused() {
        let err = Auth::load(TokenSources {
            client: secrets(&["same"]),
            worker: secrets(&["same"]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(
            err,
            LoadError::SharedToken(Role::Client, Role::Worker)
        ));
        assert!(!err.to_string().contains("same\""));
    }

    #[test]
    fn secrets_are_validated_and_redacted() {
        let s: Secret = "tok".parse().unwrap();
        assert_eq!(format!("{s:?} {s}"), "Secret(<redacted>) <redacted>");
        assert!("".parse::<Secret>().is_err());
        assert!("a b".parse::<Secret>().is_err());
        assert!("é".parse::<Secret>().is_err());
        let a = auth(&["tok"], &[], &[]);
        assert!(!format!("{a:?}").contains("tok\""));
    }
}
