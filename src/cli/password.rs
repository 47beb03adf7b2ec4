//! A password on standard input, for the commands that take `--password-stdin` (`setup`, `oauth
//! authorize`): the first line. At a terminal it asks for it and turns echo off while it is
//! typed (with `stty`, where there is one), so the password is not shown.

use std::io::{BufRead, IsTerminal};

use crate::secret::Secret;

/// Longest password line read.
const MAX: u64 = 64 * 1024;

/// Reads the first line of stdin (without its line end); `prompt` is shown at a terminal.
pub fn read_stdin(prompt: &str) -> std::io::Result<Secret> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    let hidden = terminal && stty("-echo");
    if terminal {
        eprint!("{prompt}{}: ", if hidden { "" } else { " (shown as you type)" });
    }
    let read = first_line(stdin.lock());
    if hidden {
        stty("echo");
        eprintln!();
    }
    read
}

/// The first line of `input`, without its line end.
pub fn first_line(input: impl BufRead) -> std::io::Result<Secret> {
    let mut buf = Vec::new();
    input.take(MAX).read_until(b'\n', &mut buf)?;
    while buf.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        buf.pop();
    }
    Ok(Secret::new(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_first_line() {
        assert_eq!(first_line(&b"pw one\r\nrest"[..]).unwrap().expose(), b"pw one");
        assert_eq!(first_line(&b"x"[..]).unwrap().expose(), b"x");
        assert!(first_line(&b""[..]).unwrap().is_empty());
        assert!(first_line(&b"\n"[..]).unwrap().is_empty());
    }
}
