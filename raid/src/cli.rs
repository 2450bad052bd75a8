//! Command-line text shared by the workspace's binaries (fabricd,
//! fabric-ctl, fabric-perf, fabric-bench): a bad argument is reported in
//! one line that names it.

/// A clap error as one line: its first paragraph (the message and any
/// argument names listed under it), without the usage that follows.
pub fn one_line_error(message: &str) -> String {
    let text = message.trim_start().trim_start_matches("error: ");
    text.lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_paragraph_joined() {
        let m = "error: the following required arguments were not provided:\n  --address <A>\n\nUsage: x\n";
        assert_eq!(
            one_line_error(m),
            "the following required arguments were not provided: --address <A>"
        );
        assert_eq!(
            one_line_error("error: invalid value 'x' for '--iodepth'\n\nFor more"),
            "invalid value 'x' for '--iodepth'"
        );
    }
}
