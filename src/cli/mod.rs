//! Command-line conventions shared by `relais` and every tool: `-c dir` / `MAIL_CONFIG`,
//! `-v`, and Postfix's exit codes (sysexits.h).

/// Exit codes as Postfix uses them.
pub mod exit {
    pub const OK: i32 = 0;
    /// Generic failure / usage, as Postfix's `msg_fatal` and usage messages.
    pub const FAIL: i32 = 1;
    pub const EX_USAGE: i32 = 64;
    pub const EX_DATAERR: i32 = 65;
    pub const EX_NOINPUT: i32 = 66;
    pub const EX_NOUSER: i32 = 67;
    pub const EX_UNAVAILABLE: i32 = 69;
    pub const EX_SOFTWARE: i32 = 70;
    pub const EX_OSERR: i32 = 71;
    pub const EX_CANTCREAT: i32 = 73;
    pub const EX_IOERR: i32 = 74;
    pub const EX_TEMPFAIL: i32 = 75;
    pub const EX_NOPERM: i32 = 77;
    pub const EX_CONFIG: i32 = 78;
}

/// Prints `prog: fatal: text` on standard error and exits with `code`, as Postfix's tools do.
pub fn fatal(prog: &str, code: i32, text: impl std::fmt::Display) -> ! {
    eprintln!("{prog}: fatal: {text}");
    std::process::exit(code)
}

/// Prints `prog: warning: text` on standard error.
pub fn warning(prog: &str, text: impl std::fmt::Display) {
    eprintln!("{prog}: warning: {text}");
}
