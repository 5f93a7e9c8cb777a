//! Who may do what: bearer tokens, and the rights each carries per scope
//! prefix.
//!
//! A node with `auth_tokens_file` set serves a client call only when its
//! `authorization: Bearer <token>` metadata names a known token, and only
//! when one of the token's grants covers the call's scope with the right
//! the call needs. The file holds SHA-256 digests, never tokens:
//!
//! ```toml
//! [roles.tenant-a]
//! grants = [{ prefix = "a/", rights = ["lease", "inspect"] }]
//!
//! [roles.operator]
//! grants = [{ prefix = "", rights = ["lease", "inspect", "capacity", "admin", "cluster"] }]
//!
//! [[tokens]]
//! name = "worker-a"
//! sha256 = "<64 hex digits>"       # leasehold token new --name worker-a
//! roles = ["tenant-a"]
//! grants = []                        # grants of its own, beside its roles'
//! ```
//!
//! Tokens are random (`leasehold token new`: 256 bits), so one SHA-256 is
//! enough to keep the file from giving them away; a slow password hash
//! would only slow every call.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The metadata key that carries the token, as `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// What a call may do, granted per scope prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Acquire, extend, release and check.
    Lease,
    /// Read a key's state (`Inspect`).
    Inspect,
    /// Size semaphores (`SetCapacity`, `AdjustCapacity`).
    Capacity,
    /// Pause, resume, pin and reset keys (`AdminKey`).
    Admin,
    /// What concerns the cluster, not a scope: node digests, membership,
    /// backups. Granted only for every scope (prefix `""`).
    Cluster,
}

impl Right {
    pub const ALL: [Right; 5] = [
        Right::Lease,
        Right::Inspect,
        Right::Capacity,
        Right::Admin,
        Right::Cluster,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Right::Lease => "lease",
            Right::Inspect => "inspect",
            Right::Capacity => "capacity",
            Right::Admin => "admin",
            Right::Cluster => "cluster",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rights over the scopes that start with `prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub prefix: String,
    rights: u8,
}

impl Grant {
    pub fn new(prefix: impl Into<String>, rights: &[Right]) -> Grant {
        Grant {
            prefix: prefix.into(),
            rights: rights.iter().fold(0, |bits, r| bits | r.bit()),
        }
    }

    fn allows(&self, right: Right, scope: &str) -> bool {
        self.rights & right.bit() != 0 && scope.starts_with(&self.prefix)
    }
}

/// Whom a token stands for, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub grants: Vec<Grant>,
}

impl Principal {
    /// Ok when a grant covers `scope` with `right`; else PERMISSION_DENIED
    /// naming the token, the right and the scope. `what` names the call.
    pub fn authorize(&self, right: Right, scope: &str, what: &str) -> Result<(), Status> {
        if self.grants.iter().any(|g| g.allows(right, scope)) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "token {:?} lacks the `{right}` right on scope {scope:?}, which {what} needs",
            self.name
        )))
    }

    /// Ok when the token holds `right` for every scope (the `cluster` right).
    pub fn authorize_cluster(&self, what: &str) -> Result<(), Status> {
        self.authorize(Right::Cluster, "", what)
    }
}

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The tokens a node knows, by the digest of each.
#[derive(Debug, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Arc<Principal>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    roles: BTreeMap<String, RoleEntry>,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    #[serde(default)]
    grants: Vec<GrantEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    grants: Vec<GrantEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantEntry {
    prefix: String,
    rights: Vec<Right>,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: name.clone(),
            source,
        })?;
        Tokens::parse(&text).map_err(|e| match e {
            TokensError::Parse { message, .. } => TokensError::Parse {
                path: name.clone(),
                message,
            },
            TokensError::Invalid { message, .. } => TokensError::Invalid {
                path: name.clone(),
                message,
            },
            other => other,
        })
    }

    /// The tokens of a tokens file's text.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let invalid = |message: String| TokensError::Invalid {
            path: String::new(),
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| TokensError::Parse {
            path: String::new(),
            message: e.to_string(),
        })?;
        let grants = |entries: &[GrantEntry], whose: &str| -> Result<Vec<Grant>, TokensError> {
            entries
                .iter()
                .map(|g| {
                    if g.rights.contains(&Right::Cluster) && !g.prefix.is_empty() {
                        return Err(invalid(format!(
                            "{whose}: the `cluster` right is granted only with prefix \"\" (every scope), not {:?}",
                            g.prefix
                        )));
                    }
                    Ok(Grant::new(g.prefix.clone(), &g.rights))
                })
                .collect()
        };
        let mut roles = HashMap::new();
        for (name, role) in &file.roles {
            roles.insert(
                name.as_str(),
                grants(&role.grants, &format!("role {name:?}"))?,
            );
        }
        let mut by_digest = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for token in &file.tokens {
            let whose = format!("token {:?}", token.name);
            if token.name.is_empty() {
                return Err(invalid("tokens: a token's name must not be empty".into()));
            }
            if !names.insert(token.name.as_str()) {
                return Err(invalid(format!("{whose}: named twice")));
            }
            let digest = parse_digest(&token.sha256)
                .ok_or_else(|| invalid(format!("{whose}: sha256 must be 64 hex digits")))?;
            let mut all = grants(&token.grants, &whose)?;
            for role in &token.roles {
                let role_grants = roles
                    .get(role.as_str())
                    .ok_or_else(|| invalid(format!("{whose}: no role named {role:?}")))?;
                all.extend(role_grants.iter().cloned());
            }
            let principal = Arc::new(Principal {
                name: token.name.clone(),
                grants: all,
            });
            if by_digest.insert(digest, principal).is_some() {
                return Err(invalid(format!(
                    "{whose}: its sha256 is another token's too"
                )));
            }
        }
        Ok(Tokens { by_digest })
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Whom the call's bearer token stands for; UNAUTHENTICATED when it
    /// carries none or an unknown one.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Principal>, Status> {
        let Some(value) = metadata.get(AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "this node requires a token: send `authorization: Bearer <token>` metadata",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be `Bearer <token>`")
            })?;
        self.by_digest
            .get(&digest(token.trim()))
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the bearer token is not one this node knows"))
    }
}

/// SHA-256 of a token, as the tokens file records it.
pub fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A fresh random token: `lh_` and 64 hex digits (256 bits).
pub fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source");
    format!("lh_{}", hex(&bytes))
}

/// The tokens-file entry of role `name`: `rights` on every scope that
/// begins with `prefix`.
pub fn role_entry(name: &str, prefix: &str, rights: &[Right]) -> String {
    let rights: Vec<String> = rights.iter().map(|r| format!("{:?}", r.as_str())).collect();
    format!(
        "[roles.{name:?}]\ngrants = [{{ prefix = {prefix:?}, rights = [{}] }}]\n",
        rights.join(", ")
    )
}

/// The tokens-file entry for `token`, named `name`, with `roles`.
pub fn token_entry(name: &str, token: &str, roles: &[String]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[[tokens]]\nname = {name:?}\nsha256 = \"{}\"\nroles = [{}]\n",
        hex(&digest(token)),
        roles.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        m
    }

    fn file(token_a: &str, token_ops: &str) -> String {
        format!(
            r#"
[roles.tenant-a]
grants = [{{ prefix = "a/", rights = ["lease", "inspect"] }}]

[roles.operator]
grants = [{{ prefix = "", rights = ["lease", "inspect", "capacity", "admin", "cluster"] }}]

{}
{}"#,
            token_entry("worker-a", token_a, &["tenant-a".into()]),
            token_entry("ops", token_ops, &["operator".into()])
        )
    }

    #[test]
    fn a_token_is_allowed_only_its_rights_on_its_prefixes() {
        let (a, ops) = (new_token(), new_token());
        let tokens = Tokens::parse(&file(&a, &ops)).unwrap();
        assert_eq!(tokens.len(), 2);
        let worker = tokens.authenticate(&metadata(&a)).unwrap();
        assert_eq!(worker.name, "worker-a");
        assert!(worker.authorize(Right::Lease, "a/jobs", "acquire").is_ok());
        assert!(worker.authorize(Right::Inspect, "a/", "inspect").is_ok());
        let denied = worker
            .authorize(Right::Lease, "b/jobs", "acquire")
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("`lease`"), "{}", denied.message());
        assert!(
            denied.message().contains("\"b/jobs\""),
            "{}",
            denied.message()
        );
        let denied = worker
            .authorize(Right::Admin, "a/jobs", "reset")
            .unwrap_err();
        assert!(denied.message().contains("`admin`"), "{}", denied.message());
        assert!(worker.authorize_cluster("digest").is_err());
        let operator = tokens.authenticate(&metadata(&ops)).unwrap();
        assert!(operator.authorize(Right::Admin, "b/x", "reset").is_ok());
        assert!(operator.authorize_cluster("digest").is_ok());
    }

    #[test]
    fn unknown_missing_or_malformed_tokens_are_unauthenticated() {
        let tokens = Tokens::parse(&file(&new_token(), &new_token())).unwrap();
        for metadata in [metadata(&new_token()), MetadataMap::new(), {
            let mut m = MetadataMap::new();
            m.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
            m
        }] {
            let status = tokens.authenticate(&metadata).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        }
    }

    #[test]
    fn bad_files_are_refused_naming_what_is_wrong() {
        let cases = [
            (
                "[[tokens]]\nname = \"x\"\nsha256 = \"abc\"\n",
                "64 hex digits",
            ),
            (
                &format!(
                    "{}roles = [\"nope\"]\n",
                    token_entry("x", "t", &[]).replace("roles = []\n", "")
                ),
                "no role named \"nope\"",
            ),
            (
                "[roles.r]\ngrants = [{ prefix = \"a/\", rights = [\"cluster\"] }]\n",
                "only with prefix \"\"",
            ),
            (
                "[roles.r]\ngrants = [{ prefix = \"a/\", rights = [\"fly\"] }]\n",
                "unknown variant",
            ),
            (
                &format!(
                    "{}{}",
                    token_entry("x", "t", &[]),
                    token_entry("x", "u", &[])
                ),
                "named twice",
            ),
        ];
        for (text, expected) in cases {
            let err = Tokens::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn written_roles_and_tokens_load_as_written() {
        let token = new_token();
        let file = format!(
            "{}{}",
            role_entry("tenant-a", "a/", &[Right::Lease, Right::Inspect]),
            token_entry("worker", &token, &["tenant-a".to_string()])
        );
        let tokens = Tokens::parse(&file).expect("a file the helpers wrote loads");
        let who = tokens
            .authenticate(&metadata(&token))
            .expect("the written token authenticates");
        assert_eq!(who.name, "worker");
        who.authorize(Right::Inspect, "a/x", "inspect")
            .expect("a granted right on the prefix");
        assert!(who.authorize(Right::Admin, "a/x", "reset").is_err());
        assert!(who.authorize(Right::Lease, "b/x", "acquire").is_err());
    }

    #[test]
    fn new_tokens_are_distinct_and_hex() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 64);
        assert!(a[3..].bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
