use super::*;

fn catalog() -> (tempfile::TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::at(dir.path().join("cat")).unwrap();
    (dir, cat)
}

fn history_path(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    dir.path().join("cat").join(names::HISTORY).join(name)
}

fn ended(state: JobState) -> JobEnd {
    JobEnd {
        state: Some(state),
        bytes: Some(42),
        written: Some(7),
        error: (state != JobState::Completed).then(|| (9, "it broke".to_string())),
    }
}

#[test]
fn start_and_end_lines_pair_into_one_job() {
    let (_dir, cat) = catalog();
    let (d, b) = (Uuid::new_v4(), Uuid::new_v4());
    let domain = Some((d, "vm1".to_string()));
    let one = start(
        &cat,
        JobEntry::new(JobKind::Create, domain.clone(), Some(b)),
    );
    let two = start(&cat, JobEntry::new(JobKind::Verify, domain, Some(b)));
    let (id1, id2) = (one.entry().id, two.entry().id);
    // Running: this process is alive.
    let jobs = read(&cat);
    assert_eq!(jobs.len(), 2);
    assert!(
        jobs.iter()
            .all(|j| j.state == JobState::Running && j.end.is_none())
    );
    one.finish(ended(JobState::Completed));
    two.finish(ended(JobState::Failed));
    let jobs = read(&cat);
    assert_eq!(jobs.len(), 2);
    let j1 = jobs.iter().find(|j| j.id == id1).unwrap();
    assert_eq!(
        (j1.kind, j1.state, j1.bytes, j1.written),
        (JobKind::Create, JobState::Completed, Some(42), Some(7))
    );
    assert_eq!(j1.domain, Some((d, "vm1".to_string())));
    assert_eq!(j1.backup, Some(b));
    assert!(j1.end.is_some() && j1.error.is_none());
    assert_eq!(j1.pid, std::process::id());
    let j2 = jobs.iter().find(|j| j.id == id2).unwrap();
    assert_eq!(j2.state, JobState::Failed);
    assert_eq!(j2.error, Some((9, "it broke".to_string())));
    assert!(j2.state.is_failure() && !j1.state.is_failure());
}

#[test]
fn a_start_line_whose_process_is_gone_is_interrupted() {
    let (_dir, cat) = catalog();
    // A process that has ended: its pid names nothing (or a later
    // process with another start time).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let pstart = process_start(pid).unwrap_or(1);
    child.wait().unwrap();
    let mut dead = JobEntry::new(JobKind::Restore, None, None);
    (dead.pid, dead.pstart) = (pid, pstart);
    // Our own pid with another start time: a reused pid.
    let mut reused = JobEntry::new(JobKind::Delete, None, None);
    reused.pstart += 1;
    // Another host's job is taken as running.
    let mut remote = JobEntry::new(JobKind::Export, None, None);
    (remote.host, remote.pid) = ("elsewhere.example".into(), pid);
    let ids = [dead.id, reused.id, remote.id];
    for e in [dead, reused, remote] {
        std::mem::forget(start(&cat, e));
    }
    let states: Vec<JobState> = ids
        .iter()
        .map(|id| read(&cat).into_iter().find(|j| j.id == *id).unwrap().state)
        .collect();
    assert_eq!(
        states,
        [
            JobState::Interrupted,
            JobState::Interrupted,
            JobState::Running
        ]
    );
}

/// Append finished jobs until the history file has grown past the
/// rotation size (the next line rotates it); how many were added.
fn fill(dir: &tempfile::TempDir, cat: &Catalog) -> usize {
    let len = || {
        std::fs::metadata(history_path(dir, names::HISTORY_FILE))
            .unwrap()
            .len()
    };
    let mut n = 0;
    while len() < ROTATE_AT {
        // One line each (an end line tells the whole job): the file never
        // rotates in the middle.
        let mut e = JobEntry::new(JobKind::Verify, None, None);
        e.state = JobState::Completed;
        record(cat, &e);
        n += 1;
    }
    n
}

#[test]
fn the_file_rotates_and_jobs_pair_across_the_rotation() {
    let (dir, cat) = catalog();
    let first = start(&cat, JobEntry::new(JobKind::Create, None, None));
    let id = first.entry().id;
    let n = fill(&dir, &cat) + 1;
    // The next line rotates: the job's start is in the old file, its end
    // in the new one.
    first.finish(ended(JobState::Cancelled));
    assert!(history_path(&dir, names::HISTORY_OLD).exists());
    let new = std::fs::read_to_string(history_path(&dir, names::HISTORY_FILE)).unwrap();
    assert_eq!(new.lines().count(), 1);
    let jobs = read(&cat);
    assert_eq!(jobs.len(), n);
    assert_eq!(jobs[0].id, id, "oldest first");
    assert_eq!(jobs[0].state, JobState::Cancelled);
    // Another rotation drops the start line: the end line alone still
    // tells the whole job.
    fill(&dir, &cat);
    start(&cat, JobEntry::new(JobKind::Verify, None, None)).finish(JobEnd::default());
    let jobs = read(&cat);
    let j = jobs.iter().find(|j| j.id == id).unwrap();
    assert_eq!(
        (j.kind, j.state, j.bytes),
        (JobKind::Create, JobState::Cancelled, Some(42))
    );
    // And a third drops the job: the history stays bounded.
    fill(&dir, &cat);
    start(&cat, JobEntry::new(JobKind::Verify, None, None)).finish(JobEnd::default());
    let total: u64 = [names::HISTORY_FILE, names::HISTORY_OLD]
        .iter()
        .map(|f| std::fs::metadata(history_path(&dir, f)).unwrap().len())
        .sum();
    assert!(total < ROTATE_AT + 4096, "{total}");
    assert!(read(&cat).iter().all(|j| j.id != id));
}

#[test]
fn crafted_lines_are_skipped() {
    let (dir, cat) = catalog();
    start(&cat, JobEntry::new(JobKind::Create, None, None)).finish(JobEnd::default());
    let path = history_path(&dir, names::HISTORY_FILE);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let id = Uuid::new_v4();
    let junk: Vec<&[u8]> = vec![
        b"not json\n",
        b"{\"v\":1}\n",
        b"[1,2,3]\n",
        b"{\"v\":2,\"ev\":\"start\"}\n",
        b"\xff\xfe\n",
        b"{\"v\":1,\"ev\":\"end\",\"kind\":\"create\",\"state\":\"exploded\"}\n",
        b"{\"v\":1,\"ev\":\"start\",\"id\":\"x\",\"kind\":\"create\",\"start\":1,\"host\":\"h\",\"pid\":1}\n",
        b"{\"v\":1,\"ev\":\"start\",\"kind\":\"create\",\"start\":1,\"host\":\"h\",\"pid\":99999999999}\n",
        b"{\"v\":1,\"ev\":\"end\",\"id\":\"00000000-0000-0000-0000-000000000000\",\"kind\":\"nope\"}\n",
        b"{\"v\":1,\"ev\":\"start\",\"id\":\"",
    ];
    for j in junk {
        f.write_all(j).unwrap();
    }
    // A well-formed line of another host after the junk still reads.
    let line = format!(
        "\n{{\"v\":1,\"ev\":\"end\",\"id\":\"{id}\",\"kind\":\"delete\",\"start\":5,\
         \"host\":\"h2\",\"pid\":3,\"state\":\"failed\",\"end\":6,\"code\":55,\"error\":\"no\"}}\n"
    );
    f.write_all(line.as_bytes()).unwrap();
    let jobs = read(&cat);
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0].id, id);
    assert_eq!(jobs[0].error, Some((55, "no".to_string())));
    // A writer after a line cut short (no newline) begins a new line.
    f.write_all(b"{\"partial").unwrap();
    start(&cat, JobEntry::new(JobKind::Create, None, None)).finish(JobEnd::default());
    assert_eq!(read(&cat).len(), 3);
}

#[test]
fn a_link_or_a_fifo_at_the_history_is_never_followed() {
    let (dir, cat) = catalog();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    std::fs::create_dir_all(history_path(&dir, "")).unwrap();
    std::os::unix::fs::symlink(&victim, history_path(&dir, names::HISTORY_FILE)).unwrap();
    std::os::unix::fs::symlink(&victim, history_path(&dir, names::HISTORY_OLD)).unwrap();
    start(&cat, JobEntry::new(JobKind::Create, None, None)).finish(JobEnd::default());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    assert!(read(&cat).is_empty());
    // A FIFO blocks neither the writer nor the reader.
    std::fs::remove_file(history_path(&dir, names::HISTORY_FILE)).unwrap();
    let fifo = history_path(&dir, names::HISTORY_FILE);
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    start(&cat, JobEntry::new(JobKind::Create, None, None)).finish(JobEnd::default());
    assert!(read(&cat).is_empty());
    // The history folder itself as a link is refused.
    let (dir2, cat2) = catalog();
    let elsewhere = tempfile::tempdir().unwrap();
    let link = dir2.path().join("cat").join(names::HISTORY);
    std::os::unix::fs::symlink(elsewhere.path(), link).unwrap();
    start(&cat2, JobEntry::new(JobKind::Create, None, None)).finish(JobEnd::default());
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    assert!(read(&cat2).is_empty());
}

#[test]
fn long_texts_are_cut_and_lines_stay_small() {
    let (_dir, cat) = catalog();
    let name = "é".repeat(5000);
    let s = start(
        &cat,
        JobEntry::new(JobKind::Create, Some((Uuid::new_v4(), name)), None),
    );
    s.finish(JobEnd {
        state: Some(JobState::Failed),
        error: Some((1, "x".repeat(100_000))),
        ..JobEnd::default()
    });
    let jobs = read(&cat);
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].domain.as_ref().unwrap().1.len() <= TEXT_LIMIT);
    assert!(jobs[0].error.as_ref().unwrap().1.len() <= TEXT_LIMIT);
}
