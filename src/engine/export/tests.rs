//! Tests of the daemon's command line and of the checks made before it
//! starts.

use super::*;

/// Each JSON argument, parsed back.
fn parsed(args: &[String]) -> Vec<serde_json::Value> {
    args.iter()
        .filter(|a| a.starts_with('{'))
        .map(|a| serde_json::from_str(a).unwrap())
        .collect()
}

#[test]
fn names_and_paths_of_any_kind_reach_the_daemon_intact() {
    let odd = "/i/a \"q\" \\ b\n\u{1} f\u{fc}r,x.qcow2";
    let disks = [ExportDisk {
        export_name: "v\"d\\a\n\u{fc}".into(),
        image: odd.into(),
        format: DiskFormat::Qcow2,
        bitmap: Some("b\"0".into()),
        backing: None,
    }];
    let unix = ExportServer::Unix("/s/o \"d\"\\\n\u{fc}.sock".into());
    let args = daemon_args(
        &unix,
        &disks,
        Some(Path::new("/c/\"x\"")),
        Path::new("/q"),
        &KeyPipes::default(),
    )
    .unwrap();
    let v = parsed(&args);
    assert_eq!(v[0]["filename"], odd);
    assert_eq!(v[3]["addr"]["path"], "/s/o \"d\"\\\n\u{fc}.sock");
    assert_eq!(v[2]["dir"], "/c/\"x\"");
    assert_eq!(v[4]["name"], "v\"d\\a\n\u{fc}");
    assert_eq!(v[4]["bitmaps"][0], "b\"0");
}

#[test]
fn command_line() {
    let disks = [ExportDisk {
        export_name: "vda".into(),
        image: "/i/a,b.qcow2".into(),
        format: DiskFormat::Qcow2,
        bitmap: Some("b0".into()),
        backing: None,
    }];
    let args = daemon_args(
        &ExportServer::Tcp {
            host: "127.0.0.1".into(),
            port: 10809,
        },
        &disks,
        None,
        Path::new("/s,x/qmp.sock"),
        &KeyPipes::default(),
    )
    .unwrap();
    let opts: Vec<&str> = args.iter().step_by(2).map(String::as_str).collect();
    assert_eq!(
        opts,
        [
            "--blockdev",
            "--blockdev",
            "--nbd-server",
            "--export",
            "--chardev",
            "--monitor"
        ]
    );
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    assert_eq!(
        parsed(&args),
        [
            json(
                r#"{"driver":"file","node-name":"file0","filename":"/i/a,b.qcow2","read-only":true}"#
            ),
            json(r#"{"driver":"qcow2","node-name":"disk0","file":"file0","read-only":true}"#),
            json(r#"{"addr":{"type":"inet","host":"127.0.0.1","port":"10809"}}"#),
            json(
                r#"{"type":"nbd","id":"export0","node-name":"disk0","name":"vda","writable":false,"bitmaps":["b0"]}"#
            ),
        ]
    );
    assert_eq!(
        args[9..],
        [
            "socket,id=qmp0,path=/s,,x/qmp.sock,server=on,wait=off",
            "--monitor",
            "chardev=qmp0,mode=control",
        ]
    );
}

#[test]
fn tls_command_line() {
    let disks = [ExportDisk {
        export_name: "vda".into(),
        image: "/i/a.raw".into(),
        format: DiskFormat::Raw,
        bitmap: None,
        backing: None,
    }];
    let server = ExportServer::Tcp {
        host: "0.0.0.0".into(),
        port: 10809,
    };
    let dir = Path::new("/etc/pki/a,b");
    let args = daemon_args(
        &server,
        &disks,
        Some(dir),
        Path::new("/s/q"),
        &KeyPipes::default(),
    )
    .unwrap();
    assert_eq!(
        (args[4].as_str(), args[6].as_str()),
        ("--object", "--nbd-server")
    );
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    assert_eq!(
        parsed(&args[4..8]),
        [
            json(
                r#"{"qom-type":"tls-creds-x509","id":"tls0","dir":"/etc/pki/a,b","endpoint":"server","verify-peer":true}"#
            ),
            json(r#"{"addr":{"type":"inet","host":"0.0.0.0","port":"10809"},"tls-creds":"tls0"}"#),
        ]
    );
}

#[test]
fn bad_arguments() {
    let disk = |name: &str, fmt, bitmap: Option<&str>| ExportDisk {
        export_name: name.into(),
        image: "/nonexistent.img".into(),
        format: fmt,
        bitmap: bitmap.map(Into::into),
        backing: None,
    };
    let tcp = |port| ExportServer::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    let ok = [disk("vda", DiskFormat::Raw, None)];
    assert!(validate(&tcp(0), &ok).is_err());
    assert!(validate(&tcp(1), &[]).is_err());
    assert!(validate(&tcp(1), &[disk("", DiskFormat::Raw, None)]).is_err());
    assert!(
        validate(
            &tcp(1),
            &[
                disk("a", DiskFormat::Raw, None),
                disk("a", DiskFormat::Raw, None)
            ]
        )
        .is_err()
    );
    assert!(validate(&tcp(1), &[disk("a", DiskFormat::Raw, Some("b0"))]).is_err());
    assert!(validate(&tcp(1), &[disk("a", DiskFormat::Qcow2, Some(""))]).is_err());
    assert!(validate(&ExportServer::Unix("/nonexistent-dir/s.sock".into()), &ok).is_err());
    assert!(validate(&tcp(1), &ok).is_ok());
}

#[test]
fn qmp_lines_are_told_apart_by_their_own_members() {
    let greeting = r#"{"QMP": {"version": {"qemu": {"major": 9}}, "capabilities": []}}"#;
    assert_eq!(qmp_message(greeting).unwrap(), QmpMessage::Greeting);
    assert_eq!(
        qmp_message("{\"return\": {}}\r\n").unwrap(),
        QmpMessage::Return
    );
    let refused = r#"{"error": {"class": "GenericError", "desc": "no"}}"#;
    assert_eq!(
        qmp_message(&format!("{refused}\r\n")).unwrap(),
        QmpMessage::Error(refused.into())
    );
    // "return" as a string value, or as a member of a value, answers nothing.
    for line in [
        r#"{"event": "X", "data": {"id": "return"}}"#,
        r#"{"event": "return", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}"#,
        r#"{"event": "X", "data": {"return": {}}}"#,
        r#"{"event": "X", "data": {"reason": "\"return\": {}"}}"#,
    ] {
        assert_eq!(qmp_message(line).unwrap(), QmpMessage::Other, "{line}");
    }
    // An error whose description holds "return" is an error.
    let refused = r#"{"error": {"class": "GenericError", "desc": "\"return\""}}"#;
    assert_eq!(
        qmp_message(refused).unwrap(),
        QmpMessage::Error(refused.into())
    );
    // Not a JSON object: a protocol error, not an event to skip.
    for line in [
        "",
        "\n",
        "return",
        "\"return\"",
        "[\"return\"]",
        "{\"return\": ",
    ] {
        let e = qmp_message(line).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{line:?}: {e}");
    }
}

/// A monitor that sends, before each answer, an event whose data holds
/// "return": only the answers count, so "quit" goes out after the answer
/// to "qmp_capabilities", and the refusal of "quit" is reported.
#[test]
fn qmp_quit_waits_for_the_answer_itself() {
    use std::os::unix::net::UnixListener;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let monitor = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
        let mut asked = Vec::new();
        for answer in [
            r#"{"return": {}}"#,
            r#"{"error": {"class": "GenericError", "desc": "not now"}}"#,
        ] {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            asked.push(line.trim().to_string());
            writeln!(w, r#"{{"event": "X", "data": {{"id": "return"}}}}"#).unwrap();
            writeln!(w, "{answer}").unwrap();
        }
        asked
    });
    let e = qmp_quit(&path).unwrap_err();
    assert!(e.to_string().contains("not now"), "{e}");
    assert_eq!(
        monitor.join().unwrap(),
        [r#"{"execute":"qmp_capabilities"}"#, r#"{"execute":"quit"}"#]
    );
}

#[test]
fn a_chain_given_level_by_level_is_one_node_each_and_no_header_is_followed() {
    let disks = [ExportDisk {
        export_name: "vda".into(),
        image: "/c/d/b2/vda.qcow2".into(),
        format: DiskFormat::Qcow2,
        bitmap: None,
        backing: Some(vec![
            ("/c/d/b1/vda.qcow2".into(), DiskFormat::Qcow2),
            ("/c/d/b0/vda.raw".into(), DiskFormat::Raw),
        ]),
    }];
    let unix = ExportServer::Unix("/s.sock".into());
    let args = daemon_args(&unix, &disks, None, Path::new("/q"), &KeyPipes::default()).unwrap();
    let v = parsed(&args);
    // Deepest first: the daemon knows a node before another names it.
    let nodes: Vec<_> = v[..6].iter().map(|n| n["node-name"].clone()).collect();
    assert_eq!(
        nodes,
        ["file0.2", "disk0.2", "file0.1", "disk0.1", "file0", "disk0"]
    );
    assert_eq!(v[5]["backing"], "disk0.1");
    assert_eq!(v[3]["backing"], "disk0.2");
    assert_eq!(v[3]["file"], "file0.1");
    assert_eq!(v[2]["filename"], "/c/d/b1/vda.qcow2");
    // A raw level takes no backing option; the export serves the top.
    assert!(v[1].get("backing").is_none());
    assert_eq!(v[1]["driver"], "raw");
    let export = v.iter().find(|a| a["type"] == "nbd").unwrap();
    assert_eq!(export["node-name"], "disk0", "{args:?}");
    // A qcow2 chain's last level says it has none.
    let last = ExportDisk {
        export_name: "vda".into(),
        image: "/c/d/b2/vda.qcow2".into(),
        format: DiskFormat::Qcow2,
        bitmap: None,
        backing: Some(vec![("/c/d/b1/vda.qcow2".into(), DiskFormat::Qcow2)]),
    };
    let v =
        parsed(&daemon_args(&unix, &[last], None, Path::new("/q"), &KeyPipes::default()).unwrap());
    assert!(v[1]["backing"].is_null() && v[1].get("backing").is_some());
}
