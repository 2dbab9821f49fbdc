//! Least privilege for the manager once its socket exists.
//!
//! The manager never opens a path it was sent: every file arrives as an open descriptor.
//! So after binding the socket it can (1) drop from root to an unprivileged `--user`, and
//! (2) give up filesystem access altogether with Landlock, keeping only the right to
//! remove its own socket file at shutdown. Both are best effort where the kernel lacks
//! Landlock, and say so in the log.

use std::path::Path;

use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};
use log::{info, warn};
use nix::unistd::{chown, setgid, setgroups, setuid, Group, User};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("unknown user {name:?}")]
    NoUser { name: String },
    #[error("unknown group {name:?}")]
    NoGroup { name: String },
    #[error("looking up {name:?}: {errno}")]
    Lookup { name: String, errno: nix::Error },
    #[error("{op}: {errno}")]
    Privileges { op: &'static str, errno: nix::Error },
    #[error("landlock: {0}")]
    Landlock(String),
}

/// Resolves a user name or numeric id.
pub fn lookup_user(name: &str) -> Result<User, SandboxError> {
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(uid.into()),
        Err(_) => User::from_name(name),
    };
    found
        .map_err(|errno| SandboxError::Lookup {
            name: name.into(),
            errno,
        })?
        .ok_or_else(|| SandboxError::NoUser { name: name.into() })
}

/// Resolves a group name or numeric id.
pub fn lookup_group(name: &str) -> Result<Group, SandboxError> {
    let found = match name.parse::<u32>() {
        Ok(gid) => Group::from_gid(gid.into()),
        Err(_) => Group::from_name(name),
    };
    found
        .map_err(|errno| SandboxError::Lookup {
            name: name.into(),
            errno,
        })?
        .ok_or_else(|| SandboxError::NoGroup { name: name.into() })
}

/// Gives the socket file to `group` (so a web server group can connect with mode 0660).
pub fn set_socket_group(socket: &Path, group: &Group) -> Result<(), SandboxError> {
    chown(socket, None, Some(group.gid)).map_err(|errno| SandboxError::Privileges {
        op: "chown socket",
        errno,
    })
}

/// Becomes `user` for good: its primary group only, then its uid. The socket is handed
/// to the user first so that it can still remove it at shutdown.
pub fn drop_to(user: &User, socket: &Path) -> Result<(), SandboxError> {
    let priv_err = |op| move |errno| SandboxError::Privileges { op, errno };
    chown(socket, Some(user.uid), None).map_err(priv_err("chown socket"))?;
    setgroups(&[user.gid]).map_err(priv_err("setgroups"))?;
    setgid(user.gid).map_err(priv_err("setgid"))?;
    setuid(user.uid).map_err(priv_err("setuid"))?;
    info!("running as user {} (uid {})", user.name, user.uid);
    Ok(())
}

/// Forbids every filesystem access from now on except removing files in the socket's
/// directory. Returns whether the kernel enforces it.
pub fn restrict_filesystem(socket: &Path) -> Result<bool, SandboxError> {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let abi = ABI::V5;
    let ll = |e: &dyn std::fmt::Display| SandboxError::Landlock(e.to_string());
    let dir_fd = PathFd::new(dir).map_err(|e| ll(&e))?;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| ll(&e))?
        .create()
        .map_err(|e| ll(&e))?
        .add_rule(PathBeneath::new(dir_fd, AccessFs::RemoveFile))
        .map_err(|e| ll(&e))?
        .restrict_self()
        .map_err(|e| ll(&e))?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => {
            info!("landlock: no filesystem access beyond removing the socket");
            Ok(true)
        }
        RulesetStatus::PartiallyEnforced => {
            info!("landlock: filesystem access partly restricted (older kernel ABI)");
            Ok(true)
        }
        RulesetStatus::NotEnforced => {
            warn!("landlock is not supported by this kernel: filesystem access not restricted");
            Ok(false)
        }
    }
}
