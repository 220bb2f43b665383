//! Command-line parsing of the client commands.

use clap::{CommandFactory, Parser};

use super::{check::CheckCommand, Cli, Command};

#[test]
fn definitions_are_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn parses_client_commands() {
    let cli = Cli::parse_from([
        "sonde",
        "status",
        "--unhealthy",
        "--label",
        "pool=a=b",
        "--json",
        "--socket",
        "/tmp/s",
    ]);
    assert_eq!(cli.client.socket.to_str(), Some("/tmp/s"));
    let Command::Status(a) = cli.command else {
        panic!("status")
    };
    assert!(a.unhealthy && a.json);
    assert_eq!(a.label, [("pool".to_owned(), "a=b".to_owned())]);

    let cli = Cli::parse_from([
        "sonde",
        "--api",
        "http://127.0.0.1:9911",
        "check",
        "add",
        "--id",
        "a",
        "--target",
        "127.0.0.1:80",
        "--kind",
        "tcp_connect",
        "--timeout",
        "2s",
    ]);
    assert_eq!(cli.client.api.as_deref(), Some("http://127.0.0.1:9911"));
    let Command::Check(c) = cli.command else {
        panic!("check")
    };
    let CheckCommand::Add(add) = c.command else {
        panic!("add")
    };
    assert_eq!(add.to_json().unwrap()["timeout"], "2s");

    assert!(
        Cli::try_parse_from(["sonde", "check", "add", "--id", "a"]).is_err(),
        "target and kind needed"
    );
    assert!(Cli::try_parse_from(["sonde", "check", "add", "--file", "f", "--id", "a"]).is_err());
    assert!(Cli::try_parse_from(["sonde", "status", "--label", "nokey"]).is_err());
    assert!(Cli::try_parse_from(["sonde", "validate", "x.toml"]).is_ok());
    assert!(Cli::try_parse_from(["sonde", "watch", "--json", "--api-timeout", "3"]).is_ok());
    assert!(Cli::try_parse_from(["sonde", "history", "web-1", "--json"]).is_ok());
    assert!(Cli::try_parse_from(["sonde", "reload"]).is_ok());
}
