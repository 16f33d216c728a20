//! `vaultfs` as a mount helper. `mount -t fuse.vaultfs SOURCE DIR -o OPTIONS` (or an fstab
//! line of type `fuse.vaultfs`) runs fuse3's `mount.fuse3`, which runs
//! `vaultfs SOURCE DIR -o OPTIONS`: that form becomes `vaultfs mount` with the options as its
//! flags. SOURCE is the server (`unix:PATH`, `https://HOST:PORT`) or, without a colon, a label
//! (the server then comes from `server=` or the client config).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Options every filesystem is given that mean nothing to a vault mount (mount.fuse3 drops a
/// few of these itself; mount(8) may pass the others).
const IGNORED: [&str; 19] = [
    "rw",
    "defaults",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "nodiratime",
    "async",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "nofail",
];

/// The options that become `vaultfs mount` flags with a value.
const VALUED: [(&str, &str); 10] = [
    ("server", "--server"),
    ("server_fingerprint", "--server-fingerprint"),
    ("admin_fingerprint", "--admin-fingerprint"),
    ("name", "--name"),
    ("key_file", "--key-file"),
    ("passphrase_file", "--passphrase-file"),
    ("config", "--config"),
    ("cache_mib", "--cache-mib"),
    ("dirty_mib", "--dirty-mib"),
    ("server_wait_seconds", "--server-wait-seconds"),
];

/// The options that become flags without a value.
const FLAGS: [(&str, &str); 2] = [("no_leases", "--no-leases"), ("foreground", "--foreground")];

/// When the process was started as a mount helper, runs `vaultfs mount` in its place (or
/// exits with an error line); otherwise returns. `is_subcommand` tells the program's
/// subcommands, which the helper form never starts with.
pub fn run_if_mount_helper(is_subcommand: impl Fn(&str) -> bool) {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some(first) = args.get(1) else {
        return;
    };
    if first.as_bytes().starts_with(b"-") || is_subcommand(&first.to_string_lossy()) {
        return;
    }
    let error = match translate(&args[1..]) {
        Ok(flags) => exec_mount(flags),
        Err(error) => error,
    };
    eprintln!("vaultfs: {error}");
    std::process::exit(1);
}

/// Replaces this process with `vaultfs mount FLAGS`; returns only the reason it could not.
fn exec_mount(flags: Vec<OsString>) -> String {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => return format!("finding the vaultfs binary: {error}"),
    };
    let mut command = std::process::Command::new(exe);
    command.arg("mount").args(flags);
    // mount.fuse3's setuid= changes the user but not HOME: the user's own config and key file
    // are under their home.
    if let Some(home) = home_of(rustix::process::getuid().as_raw()) {
        command.env("HOME", home);
    }
    format!("running vaultfs mount: {}", command.exec())
}

/// The home directory of `uid` in /etc/passwd.
fn home_of(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2].parse() == Ok(uid)).then(|| fields[5].to_string())
    })
}

/// The `vaultfs mount` flags for helper arguments `SOURCE DIR [-o OPTIONS]...` (`-t TYPE`,
/// `-v`, `-n`, `-s`, `-f` and `-N NS`, which mount(8) may pass, are ignored).
pub fn translate(args: &[OsString]) -> Result<Vec<OsString>, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-o") => options.extend(
                args.next()
                    .ok_or("-o needs a value")?
                    .to_str()
                    .ok_or("mount options must be UTF-8")?
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .map(str::to_string),
            ),
            Some("-t" | "-N") => {
                args.next();
            }
            Some("-v" | "-n" | "-s" | "-f") => {}
            Some(flag) if flag.starts_with('-') => {
                return Err(format!("unknown mount helper argument {flag}"));
            }
            _ => positional.push(arg.clone()),
        }
    }
    let (source, mountpoint) = match positional.as_slice() {
        [mountpoint] => (None, mountpoint.clone()),
        [source, mountpoint] => (Some(source.clone()), mountpoint.clone()),
        _ => return Err("usage: vaultfs SOURCE MOUNTPOINT [-o OPTIONS]".into()),
    };
    let mut flags = option_flags(&options)?;
    let has_server = flags.iter().any(|f| f == "--server");
    if let Some(source) = source.filter(|s| s.as_bytes().contains(&b':') && !has_server) {
        flags.extend([OsString::from("--server"), source]);
    }
    flags.push(mountpoint);
    Ok(flags)
}

fn option_flags(options: &[String]) -> Result<Vec<OsString>, String> {
    let mut flags = Vec::new();
    for option in options {
        let (key, value) = match option.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (option.as_str(), None),
        };
        if IGNORED.contains(&key) || key.starts_with("x-") || key == "comment" {
            continue;
        }
        if key == "ro" {
            return Err("a vault mount is read-write (option ro)".into());
        }
        let valued = VALUED.iter().find(|(name, _)| *name == key);
        let flag = FLAGS.iter().find(|(name, _)| *name == key);
        match (valued, flag, value) {
            (Some((_, flag)), _, Some(value)) => {
                flags.extend([OsStr::new(flag).to_owned(), OsString::from(value)]);
            }
            (None, Some((_, flag)), None) => flags.push(OsStr::new(flag).to_owned()),
            (Some(_), _, None) => return Err(format!("mount option {key} needs a value")),
            _ => {
                let known: Vec<&str> = VALUED.iter().chain(&FLAGS).map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown mount option {option} (vaultfs takes {})",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn helper_arguments_become_mount_flags() {
        let flags = translate(&strings(&[
            "unix:/srv/vault/storaged.sock",
            "/home/alice/vault",
            "-o",
            "rw,nosuid,nodev,name=alice,key_file=/k,no_leases,x-systemd.automount,dev,suid",
        ]))
        .expect("translates");
        assert_eq!(
            flags,
            strings(&[
                "--name",
                "alice",
                "--key-file",
                "/k",
                "--no-leases",
                "--server",
                "unix:/srv/vault/storaged.sock",
                "/home/alice/vault"
            ])
        );
        // A label for a source; the server from the options.
        let flags = translate(&strings(&["vault", "/m", "-o", "server=https://h:7443"]))
            .expect("translates");
        assert_eq!(flags, strings(&["--server", "https://h:7443", "/m"]));
        assert_eq!(
            translate(&strings(&["/m"])).expect("no source"),
            strings(&["/m"])
        );
    }

    #[test]
    fn bad_helper_arguments_are_refused_with_a_reason() {
        for (args, reason) in [
            (vec!["s", "/m", "-o", "ro"], "read-write"),
            (
                vec!["s", "/m", "-o", "colour=blue"],
                "unknown mount option colour=blue",
            ),
            (vec!["s", "/m", "-o", "name"], "needs a value"),
            (vec!["s", "/m", "-o"], "-o needs a value"),
            (vec!["a", "b", "c"], "usage"),
            (vec!["s", "/m", "--bogus"], "unknown mount helper argument"),
        ] {
            let error = translate(&strings(&args)).expect_err("refused");
            assert!(error.contains(reason), "{args:?}: {error}");
        }
    }
}
