//! From parsed flags to validated settings: `baton serve`'s arguments (and
//! its `--config` file) into a [`MasterConfig`], `baton check`'s into
//! [`CheckOptions`].
//!
//! The one place that turns the command line's types ([`crate::cli`]) into
//! the settings the rest of baton runs on, so that neither the master nor
//! the worker reaches back into the command line: the master gets
//! [`load`] handed to it to read its configuration again on reload.

use std::ffi::OsString;
use std::num::NonZeroUsize;
use std::time::Duration;

use crate::check::scenario::ServerTiming;
use crate::check::{parse_url, CheckOptions, Target};
use crate::cli::{CheckArgs, OutputMode, ServeArgs, Switch};
use crate::config::{
    is_executable, name_listeners, own_program_path, search_path, ConfigSource, ForeignWorker,
    MasterConfig,
};

/// The configuration from these arguments, merged over `--config FILE`
/// when given. `cli_args` are the raw arguments after `serve`, kept to
/// merge again on every reload.
pub fn serve_config(args: ServeArgs, cli_args: Vec<OsString>) -> Result<MasterConfig, String> {
    let Some(file) = args.config.clone() else {
        return master_config(args);
    };
    let source = ConfigSource { file, cli_args };
    load(&source)
}

/// Reads the configuration again from its file and command line.
pub fn load(source: &ConfigSource) -> Result<MasterConfig, String> {
    let args = crate::config_file::load(&source.file, &source.cli_args)?;
    let mut config = master_config(args)?;
    config.source = Some(source.clone());
    Ok(config)
}

/// Every problem of `serve`'s arguments and their `--config` file, for
/// `baton serve -t` and `baton upgrade-check`: nothing is bound or started.
pub fn test_config(args: ServeArgs, cli_args: Vec<OsString>) -> Vec<String> {
    let (mut problems, merged) = match args.config.clone() {
        Some(file) => crate::config_file::check(&file, &cli_args),
        None => (Vec::new(), Some(args)),
    };
    if let Some(args) = merged {
        problems.extend(problems_of(&args));
    }
    problems
}

/// Every problem of these options that the configuration alone shows:
/// the one validation of `serve -t`, the start, each reload and
/// `upgrade-check`.
fn problems_of(args: &ServeArgs) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(problem) = name_listeners(&args.listen, &[], true) {
        problems.push(problem);
    }
    if let Err(problem) = resolve_identity(args.user.as_deref(), args.group.as_deref()) {
        problems.push(problem);
    }
    if let Some(program) = args.command.first() {
        if let Err(problem) = find_program(program) {
            problems.push(problem);
        }
    }
    if let Some(dir) = args.control.as_ref().and_then(|c| c.parent()) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            problems.push(format!("--control: {} is not a directory", dir.display()));
        }
    }
    problems
}

/// Whether COMMAND's program can be run: a path to an executable file, or
/// a name found on PATH.
fn find_program(program: &std::ffi::OsStr) -> Result<(), String> {
    let named = std::path::Path::new(program);
    if program.as_encoded_bytes().contains(&b'/') {
        return if is_executable(named) {
            Ok(())
        } else {
            Err(format!(
                "COMMAND: {} is not an executable file",
                named.display()
            ))
        };
    }
    match search_path(named) {
        Some(_) => Ok(()),
        None => Err(format!("COMMAND: {} is not found on PATH", named.display())),
    }
}

/// Validates `serve`'s arguments (without a config file) into the
/// master's configuration.
pub fn master_config(args: ServeArgs) -> Result<MasterConfig, String> {
    if let Some(problem) = problems_of(&args).into_iter().next() {
        return Err(problem);
    }
    let workers = match args.workers {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
    };
    let program = own_program_path()
        .map_err(|e| format!("cannot find baton's own program file to start workers from: {e}"))?;
    let (program, worker_args, foreign) = if args.command.is_empty() {
        (program, vec!["worker".into()], None)
    } else if args.native {
        let mut worker_args: Vec<OsString> = vec!["native".into(), "--".into()];
        worker_args.extend(args.command.iter().cloned());
        (program, worker_args, None)
    } else {
        let mut worker_args: Vec<OsString> = vec!["exec".into(), "--".into()];
        worker_args.extend(args.command.iter().cloned());
        let foreign = ForeignWorker {
            ready: args.ready,
            drain_signal: args.drain_signal,
            watchdog: args.watchdog,
            rescue: args.rescue_connections == Switch::On && !args.native,
        };
        (program, worker_args, Some(foreign))
    };
    Ok(MasterConfig {
        listen: args.listen,
        unix_mode: args.unix_mode,
        control: args.control,
        source: None,
        worker_identity: resolve_identity(args.user.as_deref(), args.group.as_deref())?,
        workers,
        backlog: args.backlog,
        ready_timeout: args.ready_timeout,
        drain_timeout: args.drain_timeout,
        native_drain_grace: args.native.then_some(args.http.drain_grace),
        native_limits: args.native.then(|| args.http.client_limits()),
        native_threads: args.native.then_some(args.http.threads),
        handoff_connections: args.handoff_connections == Switch::On,
        http: args.command.is_empty().then_some(args.http),
        probation: args.probation,
        reload_batch: usize::from(args.reload_batch),
        health: args.health.map(|path| crate::config::HealthCheck {
            path,
            status: args.health_status,
            timeout: args.health_timeout,
            count: args.health_count,
            interval: args.health_interval,
            fall: args.health_fall,
        }),
        max_memory: args.max_memory,
        admin: args.admin,
        agent: args.agent,
        shutdown_delay: args.shutdown_delay,
        program,
        worker_args,
        foreign,
        prefix_output: !args.command.is_empty() && args.output == OutputMode::Prefixed,
    })
}

/// Looks up `--user` and `--group`.
fn resolve_identity(user: Option<&str>, group: Option<&str>) -> Result<Option<(u32, u32)>, String> {
    use nix::unistd::{Group, User};
    let Some(user) = user else {
        return Ok(None);
    };
    if !nix::unistd::getuid().is_root() {
        return Err(format!("--user {user} needs baton to run as root"));
    }
    let found = User::from_name(user)
        .map_err(|e| format!("cannot look up user {user:?}: {e}"))?
        .ok_or_else(|| format!("there is no user {user:?}"))?;
    let gid = match group {
        None => found.gid,
        Some(group) => {
            Group::from_name(group)
                .map_err(|e| format!("cannot look up group {group:?}: {e}"))?
                .ok_or_else(|| format!("there is no group {group:?}"))?
                .gid
        }
    };
    Ok(Some((found.uid.as_raw(), gid.as_raw())))
}

/// How often `baton check` reloads when `--reload-every` is not given.
const DEFAULT_RELOAD_EVERY: Duration = Duration::from_secs(3);

/// Validates `baton check`'s arguments into the check's options.
pub fn check_options(args: CheckArgs) -> Result<CheckOptions, String> {
    // Baton's own server's timing; another server's drain grace is assumed
    // to be baton's default, and its keep-alive timeout unknown.
    let server_timing = ServerTiming {
        drain_grace: args.serve.http.drain_grace,
        keepalive_timeout: args
            .url
            .is_none()
            .then_some(args.serve.http.keepalive_timeout),
    };
    let target = match args.url {
        Some(url) => {
            if args.kill_every.is_some() {
                return Err("--kill-every needs a server baton starts itself; it cannot kill the workers of --url".into());
            }
            let (url, addr) = parse_url(&url)?;
            Target::External {
                url,
                addr,
                reload_command: args.reload_command,
            }
        }
        None => self_hosted(args.serve)?,
    };
    let reload_every = reload_schedule(args.reload_every, &target)?;
    if args.reloads.is_some() && reload_every.is_none() {
        return Err(
            "--reloads needs reloads: with --url give --reload-command, and --reload-every not 0s"
                .into(),
        );
    }
    Ok(CheckOptions {
        target,
        scenarios: crate::check::scenario::Scenario::chosen(&args.scenarios),
        server_timing,
        // With --reloads the check ends at its last reload's outcome; the
        // duration is only a bound.
        duration: if args.reloads.is_some() {
            crate::values::DAY
        } else {
            args.duration
        },
        reloads: args.reloads.map(|n| n as usize),
        connections: args.connections as usize,
        keepalive_ratio: args.keepalive_ratio,
        reload_every,
        kill_every: args.kill_every.filter(|every| !every.is_zero()),
        request_timeout: args.request_timeout,
        json: args.json,
        junit: args.junit,
        plot: args.plot,
        progress: true,
    })
}

/// The `baton serve` a check without `--url` starts: its options written
/// as a config file, as a deploy's would be.
fn self_hosted(mut serve: ServeArgs) -> Result<Target, String> {
    if serve.test_config {
        return Err("-t tests the configuration of `baton serve`, not the check".into());
    }
    if serve.listen.is_empty() {
        serve
            .listen
            .push("127.0.0.1:0".parse().expect("a valid address"));
    }
    if serve.control.is_none() {
        // Its own control socket, so that the check runs beside
        // a baton that uses the default one.
        let dir = crate::control::default_dir();
        crate::control::ensure_private_dir(&dir)?;
        serve.control = Some(dir.join(format!("check-{}.sock", std::process::id())));
    }
    // Validate now, so that a bad serve option is a usage error
    // of the check itself.
    master_config(serve.clone())?;
    let program = own_program_path().map_err(|e| {
        format!("cannot find baton's own program file to start the server from: {e}")
    })?;
    // The server reads its options from a config file, as a
    // deploy's would.
    let control = serve.control.clone().expect("set above");
    let config = control.with_extension("toml");
    let text = toml::to_string(&serve)
        .map_err(|e| format!("cannot write the server's options as TOML: {e}"))?;
    std::fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    Ok(Target::SelfHosted { program, config })
}

/// How often the check reloads: `--reload-every` (0 for never), by
/// default every few seconds unless baton cannot reload the target.
fn reload_schedule(every: Option<Duration>, target: &Target) -> Result<Option<Duration>, String> {
    let every = match (every, target) {
        (
            Some(every),
            Target::External {
                reload_command: None,
                ..
            },
        ) if !every.is_zero() => {
            return Err(
                "--reload-every needs --reload-command with --url: baton cannot reload a server it did not start"
                    .into(),
            )
        }
        (Some(every), _) => Some(every),
        (
            None,
            Target::External {
                reload_command: None,
                ..
            },
        ) => None,
        (None, _) => Some(DEFAULT_RELOAD_EVERY),
    };
    Ok(every.filter(|every| !every.is_zero()))
}

/// The arguments after `serve` this process was started with: merged over
/// `--config` again on each reload, and what an upgrade's new program
/// checks its configuration with.
pub fn own_serve_args() -> Vec<std::ffi::OsString> {
    std::env::args_os()
        .skip_while(|a| a != "serve")
        .skip(1)
        .collect()
}
