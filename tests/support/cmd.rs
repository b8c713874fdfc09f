//! Running the `vigil` binary the way a user does, in ripgrep's harness style: build a command
//! ([`vigil`]), then [`Cmd::run`], [`Cmd::assert_success`] or [`Cmd::assert_failure`]. When an
//! expectation fails, the panic shows the whole command line, its working directory, the exit
//! status, stdout and stderr, so the failure can be reproduced in a shell.
//!
//! Servers (`vigil serve`, `vigil demo`) are started with [`Cmd::spawn`]: the [`Process`] guard
//! captures their output in files, kills them when dropped, and prints their command and output
//! if the test is failing.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `vigil` binary built for these tests, run from the repository root, with no `VIGIL_*`
/// variable inherited from the environment of the test run (the binary reads many of them): a
/// test sets the ones it means with [`Cmd::env`].
pub fn vigil() -> Cmd {
    let mut c = Cmd::new(env!("CARGO_BIN_EXE_vigil"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VIGIL_") {
            c.cmd.env_remove(&key);
        }
    }
    c
}

/// A command to run; see the module docs.
pub struct Cmd {
    cmd: Command,
    /// What `cmd` was told, kept to print it: the environment it sets and its directory.
    envs: Vec<(OsString, OsString)>,
    dir: PathBuf,
    stdin: Option<Vec<u8>>,
}

/// What a finished command printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Cmd {
    /// Any program (`vigil()` is the usual one), run from the repository root.
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        let dir = super::fixtures::repo().to_path_buf();
        let mut cmd = Command::new(program);
        cmd.current_dir(&dir);
        Cmd {
            cmd,
            envs: Vec::new(),
            dir,
            stdin: None,
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Cmd {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Cmd {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self.cmd.env(key, value);
        self
    }

    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Cmd
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Cmd {
        self.dir = dir.as_ref().to_path_buf();
        self.cmd.current_dir(dir);
        self
    }

    /// Bytes written to the command's stdin (otherwise stdin is empty).
    pub fn stdin(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    /// Runs to completion, whatever the exit status.
    pub fn run(&mut self) -> Output {
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.describe()));
        // Written from a thread: a child that prints a lot before reading all of its input
        // would otherwise wait for us while we wait for it.
        let writer = self.stdin.clone().map(|bytes| {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            })
        });
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.describe()));
        if let Some(w) = writer {
            w.join().expect("stdin writer");
        }
        Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and expects exit status 0; returns the output.
    pub fn assert_success(&mut self) -> Output {
        let out = self.run();
        if !out.status.success() {
            panic!("{}", self.report("expected success", &out));
        }
        out
    }

    /// Runs and expects a non-zero exit status; returns the output.
    pub fn assert_failure(&mut self) -> Output {
        let out = self.run();
        if out.status.success() {
            panic!("{}", self.report("expected failure", &out));
        }
        out
    }

    /// Starts the command in the background (a server), its stdout and stderr captured.
    pub fn spawn(&mut self) -> Process {
        let dir = tempfile::tempdir().expect("tempdir for the process output");
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let file = |p: &Path| std::fs::File::create(p).expect("process output file");
        let child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(file(&stdout))
            .stderr(file(&stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.describe()));
        Process {
            child: Some(child),
            status: None,
            command: self.describe(),
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// The command line and working directory, as a shell would take them.
    fn describe(&self) -> String {
        let mut line = String::new();
        for (k, v) in &self.envs {
            let _ = write!(line, "{}={} ", k.to_string_lossy(), quote(v));
        }
        line.push_str(&quote(self.cmd.get_program()));
        for a in self.cmd.get_args() {
            line.push(' ');
            line.push_str(&quote(a));
        }
        format!("{line}\n(in {})", self.dir.display())
    }

    fn report(&self, expected: &str, out: &Output) -> String {
        format!(
            "{expected}, but the command exited with {}\n--- command\n{}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            self.describe(),
            out.stdout,
            out.stderr
        )
    }
}

/// `s` quoted for a POSIX shell when it needs to be.
fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A process started by [`Cmd::spawn`]. Dropping it kills the process (SIGKILL); if the test is
/// panicking, the drop prints the command and everything the process printed first.
pub struct Process {
    child: Option<Child>,
    /// Its exit status, once it has exited.
    status: Option<ExitStatus>,
    command: String,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far (`vigil` logs there).
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The complete lines of stdout so far (a line still being written is left out).
    pub fn stdout_lines(&self) -> Vec<String> {
        complete_lines(&self.stdout_text())
    }

    /// The complete lines of stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        complete_lines(&self.stderr_text())
    }

    /// Waits up to `timeout` for a complete line of stderr for which `find` returns something,
    /// and returns that; panics naming `what` otherwise.
    pub fn wait_for_stderr<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        find: impl FnMut(&str) -> Option<T>,
    ) -> T {
        self.wait_for_line(false, what, timeout, find)
    }

    /// [`Process::wait_for_stderr`] on stdout.
    pub fn wait_for_stdout<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        find: impl FnMut(&str) -> Option<T>,
    ) -> T {
        self.wait_for_line(true, what, timeout, find)
    }

    fn wait_for_line<T>(
        &mut self,
        stdout: bool,
        what: &str,
        timeout: Duration,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_wait().is_some();
            let lines = if stdout {
                self.stdout_lines()
            } else {
                self.stderr_lines()
            };
            if let Some(found) = lines.iter().find_map(|l| find(l)) {
                return found;
            }
            assert!(!exited, "the process exited before printing {what}");
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{sig} {}", self.pid());
    }

    /// SIGTERM, then waits (up to a minute) for the exit: a graceful shutdown.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(60))
    }

    /// SIGKILL: no clean-up at all.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            if let Ok(status) = c.wait() {
                self.status = Some(status);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; panics otherwise.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.status = Some(status);
            }
        }
        self.status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let exit = match self.try_wait() {
            Some(status) => status.to_string(),
            None => "still running (killed now)".to_string(),
        };
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- process\n{}\n--- exit: {exit}\n--- stdout\n{}\n--- stderr\n{}",
                self.command,
                self.stdout_text(),
                self.stderr_text()
            );
        }
    }
}

fn complete_lines(text: &str) -> Vec<String> {
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect()
}
