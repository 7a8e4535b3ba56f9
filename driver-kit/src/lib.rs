//! # strata-driver-kit
//!
//! The plumbing every strata driver needs, written once and right, so a
//! driver author (ours or a third party's) writes only what is particular to
//! their storage:
//!
//! * [`home::LayerHome`]: where layers live. Ids are checked for every
//!   operation; a layer is built in a staging directory that a lock its maker
//!   holds owns, and appears whole with its parent record in one rename;
//!   removal takes it away in one rename first. Whatever a killed process
//!   left is collected by the next process that finds it, and never what a
//!   live one is still working on, whichever pid namespace it runs in.
//! * [`copy`]: a tree copy keeping every file kind, owner, mode, time,
//!   xattr, hard link and hole (reflinked where the filesystem can).
//! * [`xattr`]: reading xattr names and values with buffers that grow, and
//!   copying a directory's own metadata ([`xattr::copy_root_metadata`]).
//! * [`delete`]: deleting a tree without crossing into what is mounted in it.
//! * [`fs_type`]: what filesystem a path is on.
//! * [`subvolume`]: btrfs subvolumes met in a tree: deleted as one, nested
//!   ones first, read-only ones too; their read-only flag.
//! * [`image_layer`]: the filling contract of read-only image layers: the
//!   access a `get` asks for, the marks, sealing in a kill-safe order.
//! * [`mounts`]: mount points from `/proc/self/mountinfo`, and taking down
//!   what a killed process left mounted under a directory.
//! * [`options`]: driver options with unknown keys refused and values checked.
//!
//! The template driver (`conformance/template`) shows all of it in use.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod copy;
pub mod delete;
pub mod fs_type;
pub mod home;
pub mod image_layer;
pub mod lock;
pub mod mounts;
pub mod options;
pub mod subvolume;
pub mod xattr;

pub use home::{LayerHome, Staging};
pub use options::DriverOptions;
