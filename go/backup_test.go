package libvirtbackup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// The flag values are API.md's (the header's, where it has them).
func TestConstantsAreAPIValues(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"CREATE_QUIESCE", uint64(DOMAIN_BACKUP_CREATE_QUIESCE), 1 << 0},
		{"CREATE_NO_FALLBACK", uint64(DOMAIN_BACKUP_CREATE_NO_FALLBACK), 1 << 1},
		{"CREATE_WAIT", uint64(DOMAIN_BACKUP_CREATE_WAIT), 1 << 2},
		{"LIST_FULL", uint64(DOMAIN_BACKUP_LIST_FULL), 1 << 0},
		{"LIST_LATEST", uint64(DOMAIN_BACKUP_LIST_LATEST), 1 << 1},
		{"LIST_INCREMENTAL", uint64(DOMAIN_BACKUP_LIST_INCREMENTAL), 1 << 2},
		{"LIST_LEAVES", uint64(DOMAIN_BACKUP_LIST_LEAVES), 1 << 3},
		{"LIST_DESCENDANTS", uint64(DOMAIN_BACKUP_LIST_DESCENDANTS), 1 << 4},
		{"RESTORE_NEW_DOMAIN", uint64(DOMAIN_BACKUP_RESTORE_NEW_DOMAIN), 1 << 0},
		{"RESTORE_REWRITE_EXISTING_DISK", uint64(DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK), 1 << 1},
		{"RESTORE_INSTANT", uint64(DOMAIN_BACKUP_RESTORE_INSTANT), 1 << 2},
		{"RESTORE_START", uint64(DOMAIN_BACKUP_RESTORE_START), 1 << 3},
		{"RESTORE_FILES_ONLY", uint64(DOMAIN_BACKUP_RESTORE_FILES_ONLY), 1 << 4},
		{"DELETE_ALL", uint64(DOMAIN_BACKUP_DELETE_ALL), 1 << 0},
		{"DELETE_ALL_CHILDREN", uint64(DOMAIN_BACKUP_DELETE_ALL_CHILDREN), 1 << 1},
		{"DELETE_METADATA_ONLY", uint64(DOMAIN_BACKUP_DELETE_METADATA_ONLY), 1 << 2},
		{"FINISH_JOB_CANCEL", uint64(DOMAIN_BACKUP_FINISH_JOB_CANCEL), 1 << 0},
		{"FINISH_JOB_CHECK", uint64(DOMAIN_BACKUP_FINISH_JOB_CHECK), 1 << 1},
		{"STATE_RUNNING", uint64(DOMAIN_BACKUP_STATE_RUNNING), 1},
		{"STATE_COMPLETED", uint64(DOMAIN_BACKUP_STATE_COMPLETED), 2},
		{"STATE_FAILED", uint64(DOMAIN_BACKUP_STATE_FAILED), 3},
		{"STATE_CANCELLED", uint64(DOMAIN_BACKUP_STATE_CANCELLED), 4},
		{"UNDEFINE_BACKUP", uint64(DOMAIN_UNDEFINE_BACKUP), 1 << 30},
		{"XML_SECURE", uint64(DOMAIN_BACKUP_XML_SECURE), 1 << 0},
		{"ERR_NO_DOMAIN_BACKUP", uint64(ERR_NO_DOMAIN_BACKUP), 104},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, API.md says %d", c.name, c.got, c.want)
		}
	}
}

// A full backup with WAIT, then an incremental one without WAIT waited for
// with FinishJob; both compared byte for byte with the disk as it was.
func TestCreateWaitAndIncremental(t *testing.T) {
	dir := workDir(t)
	const size = 64 * MiB
	dom, vda := simpleDomain(t, dir, "qcow2", size)
	at0 := snapshot(t, vda, "qcow2", filepath.Join(dir, "at0.raw"))

	fullT := filepath.Join(dir, "full.qcow2")
	full := mustCreate(t, dom, backupXML(fullT, ""), DOMAIN_BACKUP_CREATE_WAIT)
	sameImage(t, fullT, "qcow2", at0, "raw")
	p := params(t, full)
	if p.State != DOMAIN_BACKUP_STATE_COMPLETED || p.Incremental || p.Disks != 1 ||
		p.BytesTotal != size || p.BytesProcessed != size || p.BytesWritten == 0 ||
		p.BytesWritten > 2*MiB || p.Error != "" {
		t.Fatalf("full backup parameters: %+v", p)
	}
	if d := doc(t, full); d.State != "completed" || len(d.Disks) != 1 || d.Disks[0].Mode != "full" ||
		d.Disks[0].Target.File != fullT || d.Disks[0].Source.File != vda || d.Parent != "" {
		t.Fatalf("full backup XML: %+v", d)
	}

	// 4 MiB change, then an incremental backup on top of the full one.
	writeDisk(t, vda, "qcow2", write{8 * MiB, 4 * MiB, 0xcd})
	at1 := snapshot(t, vda, "qcow2", filepath.Join(dir, "at1.raw"))
	incT := filepath.Join(dir, "inc.qcow2")
	inc := mustCreate(t, dom, backupXML(incT, uuidOf(t, full)), 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := inc.FinishJob(ctx); err != nil {
		t.Fatalf("FinishJob: %v", err)
	}
	if running, err := inc.CheckJob(); running || err != nil {
		t.Fatalf("CheckJob after the end: %v %v", running, err)
	}
	sameImage(t, incT, "qcow2", at1, "raw")
	p = params(t, inc)
	if p.State != DOMAIN_BACKUP_STATE_COMPLETED || !p.Incremental || p.Disks != 1 ||
		p.BytesWritten < 4*MiB || p.BytesWritten > 5*MiB {
		t.Fatalf("incremental parameters: %+v", p)
	}
	x, err := inc.XMLDesc(0)
	if err != nil {
		t.Fatal(err)
	}
	if d := parseDoc(t, x); d.State != "completed" || len(d.Disks) != 1 ||
		d.Disks[0].Mode != "incremental" || d.Parent != uuidOf(t, full) {
		t.Fatalf("incremental XML: %+v", d)
	}
	chain := run(t, "qemu-img", "info", "--backing-chain", incT)
	if !strings.Contains(chain, "backing file: "+fullT) {
		t.Fatalf("incremental target is not backed by the full one:\n%s", chain)
	}

	// The same backup found by UUID.
	again, err := LookupByUUID(uuidOf(t, inc), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Free()
	if x2, _ := again.XMLDesc(0); x2 != x {
		t.Fatalf("LookupByUUID gives another XML:\n%s\n%s", x2, x)
	}
}

// Every List flag and ListChildren on a tree:
//
//	A ─ B ─ C
//	 └─ D       E (a second chain)
func TestListFlags(t *testing.T) {
	dir := workDir(t)
	dom, _ := simpleDomain(t, dir, "raw", 4*MiB)
	mk := func(parent *Backup) string {
		p := ""
		if parent != nil {
			p = uuidOf(t, parent)
		}
		return uuidOf(t, mustCreate(t, dom, backupXML("", p), DOMAIN_BACKUP_CREATE_WAIT))
	}
	a := mustCreate(t, dom, "", DOMAIN_BACKUP_CREATE_WAIT)
	A := uuidOf(t, a)
	b := mustCreate(t, dom, backupXML("", A), DOMAIN_BACKUP_CREATE_WAIT)
	B := uuidOf(t, b)
	C := mk(b)
	D := mk(a)
	E := mk(nil)

	for _, c := range []struct {
		flags DomainBackupListFlags
		want  []string
	}{
		{0, sorted(A, B, C, D, E)},
		{DOMAIN_BACKUP_LIST_FULL, sorted(A, E)},
		{DOMAIN_BACKUP_LIST_INCREMENTAL, sorted(B, C, D)},
		{DOMAIN_BACKUP_LIST_LEAVES, sorted(C, D, E)},
		{DOMAIN_BACKUP_LIST_LATEST, sorted(E)},
		{DOMAIN_BACKUP_LIST_FULL | DOMAIN_BACKUP_LIST_LEAVES, sorted(E)},
		{DOMAIN_BACKUP_LIST_INCREMENTAL | DOMAIN_BACKUP_LIST_LEAVES, sorted(C, D)},
	} {
		list, err := dom.List(c.flags)
		if got := uuids(t, list, err); !reflect.DeepEqual(got, c.want) {
			t.Errorf("List(%#x) = %v, want %v", c.flags, got, c.want)
		}
	}
	for _, c := range []struct {
		of    *Backup
		flags DomainBackupListFlags
		want  []string
	}{
		{a, 0, sorted(B, D)},
		{a, DOMAIN_BACKUP_LIST_DESCENDANTS, sorted(B, C, D)},
		{b, 0, sorted(C)},
		{a, DOMAIN_BACKUP_LIST_DESCENDANTS | DOMAIN_BACKUP_LIST_LEAVES, sorted(C, D)},
	} {
		list, err := c.of.ListChildren(c.flags)
		if got := uuids(t, list, err); !reflect.DeepEqual(got, c.want) {
			t.Errorf("ListChildren(%#x) = %v, want %v", c.flags, got, c.want)
		}
	}
	// A leaf has an empty list, not nil.
	if list, err := b.ListChildren(DOMAIN_BACKUP_LIST_LEAVES); err != nil || list == nil || len(list) != 1 {
		t.Errorf("ListChildren(LEAVES) of B: %v %v", list, err)
	}
	_, err := dom.List(DOMAIN_BACKUP_LIST_FULL | DOMAIN_BACKUP_LIST_INCREMENTAL)
	wantError(t, err, ERR_INVALID_ARG)
	_, err = dom.List(1 << 12)
	if e := wantError(t, err, ERR_INVALID_ARG); !strings.Contains(e.Message, "0x1000") {
		t.Errorf("unsupported flags message: %s", e.Message)
	}
}

func TestXMLDomainAndLookup(t *testing.T) {
	dir := workDir(t)
	dom, vda := simpleDomain(t, dir, "raw", 4*MiB)
	b := mustCreate(t, dom, "<domainbackup><description>nightly</description></domainbackup>",
		DOMAIN_BACKUP_CREATE_WAIT)
	x, err := b.XMLDesc(0)
	if err != nil {
		t.Fatal(err)
	}
	xs, err := b.XMLDesc(DOMAIN_BACKUP_XML_SECURE)
	if err != nil {
		t.Fatal(err)
	}
	u := uuidOf(t, b)
	du, _ := dom.UUIDString()
	dn, _ := dom.Name()
	for _, d := range []*backupDoc{parseDoc(t, x), parseDoc(t, xs)} {
		if d.UUID != u || d.Description != "nightly" || d.Domain.UUID != du || d.Domain.Name != dn ||
			len(d.Disks) != 1 || d.Disks[0].Source.File != vda {
			t.Errorf("XML: %+v", d)
		}
	}
	_, err = b.XMLDesc(1 << 7)
	wantError(t, err, ERR_INVALID_ARG)

	bd, err := b.Domain()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := bd.UUIDString(); got != du {
		t.Errorf("Backup.Domain: %s, want %s", got, du)
	}
	bd.Close()
	if _, err := bd.Name(); err == nil {
		t.Error("a closed Domain still answers")
	}

	// A UUID chosen by the caller; it cannot be used twice.
	u2 := randomUUID()
	b2 := mustCreate(t, dom, "<domainbackup><uuid>"+u2+"</uuid></domainbackup>", DOMAIN_BACKUP_CREATE_WAIT)
	if got := uuidOf(t, b2); got != u2 {
		t.Errorf("UUIDString %s, want %s", got, u2)
	}
	_, err = dom.CreateXML("<domainbackup><uuid>"+u2+"</uuid></domainbackup>", DOMAIN_BACKUP_CREATE_WAIT)
	wantError(t, err, ERR_INVALID_ARG)

	// LookupDomain opens a connection of its own: it sees the domain while
	// testConn is open, by name and by UUID.
	for _, key := range []string{du, dn} {
		d2, err := LookupDomain(testURI, key)
		if err != nil {
			t.Fatalf("LookupDomain(%s): %v", key, err)
		}
		list, err := d2.List(0)
		if got := uuids(t, list, err); !reflect.DeepEqual(got, sorted(u, uuidOf(t, b2))) {
			t.Errorf("List through LookupDomain: %v", got)
		}
		if err := d2.Close(); err != nil {
			t.Fatal(err)
		}
	}
	_, err = LookupDomain(testURI, "lvb-go-no-such-domain")
	wantError(t, err, ERR_NO_DOMAIN)

	// A domain outlives the Conn it came from.
	c2, err := Connect(testURI)
	if err != nil {
		t.Fatal(err)
	}
	d3, err := c2.LookupDomain(dn)
	if err != nil {
		t.Fatal(err)
	}
	defer d3.Close()
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = c2.LookupDomain(dn)
	wantError(t, err, ERR_INVALID_ARG)
	list, err := d3.List(DOMAIN_BACKUP_LIST_LATEST)
	if got := uuids(t, list, err); !reflect.DeepEqual(got, []string{u2}) {
		t.Errorf("List(LATEST) after the Conn closed: %v, want %s", got, u2)
	}
}

// A job cancelled through FinishJob's context is aborted: no data, no
// entry, state cancelled; a context that does not end lets it complete.
func TestFinishJobContext(t *testing.T) {
	dir := workDir(t)
	const size = 256 * MiB
	path := makeDisk(t, filepath.Join(dir, "big.raw"), "raw", size, write{0, size, 0x3c})
	dom := testDomain(t, disk{"vda", path, "raw"})

	target := filepath.Join(dir, "cancelled.qcow2")
	b := mustCreate(t, dom, backupXML(target, ""), 0)
	p := params(t, b)
	if p.State != DOMAIN_BACKUP_STATE_RUNNING || p.BytesTotal != size {
		t.Fatalf("a job that has just started: %+v (the disk is too small to catch it running?)", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := b.FinishJob(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("FinishJob with an expired context: %v", err)
	}
	p = params(t, b)
	if p.State != DOMAIN_BACKUP_STATE_CANCELLED {
		t.Fatalf("after the abort: %+v", p)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("the cancelled backup left its target: %v", err)
	}
	list, err := dom.List(0)
	if got := uuids(t, list, err); len(got) != 0 {
		t.Fatalf("a cancelled backup is listed: %v", got)
	}
	// Aborting again: the job has ended.
	wantError(t, b.AbortJob(0), ERR_OPERATION_INVALID)

	// Explicit AbortJob while it runs.
	b2 := mustCreate(t, dom, backupXML(target, ""), 0)
	if err := b2.AbortJob(0); err != nil {
		t.Fatal(err)
	}
	if p := params(t, b2); p.State != DOMAIN_BACKUP_STATE_CANCELLED {
		t.Fatalf("after AbortJob: %+v", p)
	}
	err = b2.FinishJob(context.Background())
	if e := wantError(t, err, ERR_OPERATION_ABORTED); e == nil {
		t.Fatal("unreachable")
	}

	// A context that is not cancelled: the job completes.
	b3 := mustCreate(t, dom, backupXML(target, ""), 0)
	ctx3, cancel3 := context.WithCancel(context.Background())
	defer cancel3()
	if err := b3.FinishJob(ctx3); err != nil {
		t.Fatal(err)
	}
	p = params(t, b3)
	if p.State != DOMAIN_BACKUP_STATE_COMPLETED || p.BytesProcessed != size || p.Elapsed <= 0 {
		t.Fatalf("completed job: %+v", p)
	}
	sameImage(t, target, "qcow2", path, "raw")
	// Cancelling a context after the end changes nothing.
	cancel3()
	if err := b3.FinishJob(ctx3); err != nil {
		t.Fatalf("FinishJob of a completed job with a cancelled context: %v", err)
	}

	// A job that fails (its raw source grows while it is copied): the
	// job's error, and the reason in the parameters.
	failT := filepath.Join(dir, "failed.qcow2")
	b4 := mustCreate(t, dom, backupXML(failT, ""), 0)
	if err := os.Truncate(path, size+MiB); err != nil {
		t.Fatal(err)
	}
	if p := params(t, b4); p.State != DOMAIN_BACKUP_STATE_RUNNING {
		t.Fatalf("the job ended before the source grew: %+v", p)
	}
	e := wantError(t, b4.FinishJob(context.Background()), ERR_OPERATION_FAILED)
	p = params(t, b4)
	if p.State != DOMAIN_BACKUP_STATE_FAILED || !strings.Contains(p.Error, "changed size") ||
		!strings.Contains(e.Message, "changed size") {
		t.Fatalf("failed job: %+v (error %v)", p, e)
	}
	if _, err := os.Stat(failT); !os.IsNotExist(err) {
		t.Fatalf("the failed backup left its target: %v", err)
	}
}

func TestRestore(t *testing.T) {
	dir := workDir(t)
	dom, vda := simpleDomain(t, dir, "raw", 16*MiB)
	at0 := snapshot(t, vda, "raw", filepath.Join(dir, "at0.raw"))
	b := mustCreate(t, dom, backupXML(filepath.Join(dir, "b.qcow2"), ""), DOMAIN_BACKUP_CREATE_WAIT)
	u := uuidOf(t, b)
	writeDisk(t, vda, "raw", write{2 * MiB, 3 * MiB, 0xee})
	changed := snapshot(t, vda, "raw", filepath.Join(dir, "changed.raw"))
	differentImage(t, vda, "raw", at0, "raw")

	// Without REWRITE_EXISTING_DISK nothing is touched.
	err := Restore("<domainbackup><uuid>"+u+"</uuid></domainbackup>", 0)
	wantError(t, err, ERR_OPERATION_INVALID)
	sameImage(t, vda, "raw", changed, "raw")

	if err := Restore("<domainbackup><uuid>"+u+"</uuid></domainbackup>",
		DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK); err != nil {
		t.Fatal(err)
	}
	sameImage(t, vda, "raw", at0, "raw")

	// As a new domain, with its disk where we say.
	newName := "lvb-go-restored-" + randomHex(4)
	newDisk := filepath.Join(dir, "restored.qcow2")
	err = Restore(fmt.Sprintf("<domainbackup><uuid>%s</uuid><domain name='%s'/><disks>"+
		"<disk name='vda'><target file='%s'/></disk></disks></domainbackup>", u, newName, newDisk),
		DOMAIN_BACKUP_RESTORE_NEW_DOMAIN)
	if err != nil {
		t.Fatal(err)
	}
	nd, err := testConn.LookupDomain(newName)
	if err != nil {
		t.Fatalf("the restored domain: %v", err)
	}
	defer func() {
		if err := nd.Undefine(DOMAIN_UNDEFINE_BACKUP); err != nil {
			t.Error(err)
		}
		nd.Close()
	}()
	sameImage(t, newDisk, "qcow2", at0, "raw")
	if nu, _ := nd.UUIDString(); nu == "" || nu == mustUUID(t, dom) {
		t.Errorf("the new domain's UUID: %q", nu)
	}

	// RestoreUnmanaged from a file the library did not make.
	src := makeDisk(t, filepath.Join(dir, "src.qcow2"), "qcow2", 16*MiB, write{0, 16 * MiB, 0x11})
	xml := "<domainbackup><disks><disk name='vda'><source file='" + src + "'><driver type='qcow2'/></source></disk></disks></domainbackup>"
	wantError(t, dom.RestoreUnmanaged(xml, 0), ERR_OPERATION_INVALID)
	sameImage(t, vda, "raw", at0, "raw")
	if err := dom.RestoreUnmanaged(xml, DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK); err != nil {
		t.Fatal(err)
	}
	sameImage(t, vda, "raw", src, "qcow2")
}

func mustUUID(t *testing.T, d *Domain) string {
	t.Helper()
	u, err := d.UUIDString()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestDelete(t *testing.T) {
	dir := workDir(t)
	dom, vda := simpleDomain(t, dir, "qcow2", 16*MiB)
	tgt := func(n string) string { return filepath.Join(dir, n+".qcow2") }
	a := mustCreate(t, dom, backupXML(tgt("a"), ""), DOMAIN_BACKUP_CREATE_WAIT)
	writeDisk(t, vda, "qcow2", write{1 * MiB, MiB, 0x01})
	b := mustCreate(t, dom, backupXML(tgt("b"), uuidOf(t, a)), DOMAIN_BACKUP_CREATE_WAIT)
	writeDisk(t, vda, "qcow2", write{5 * MiB, MiB, 0x02})
	atC := snapshot(t, vda, "qcow2", filepath.Join(dir, "atC.raw"))
	c := mustCreate(t, dom, backupXML(tgt("c"), uuidOf(t, b)), DOMAIN_BACKUP_CREATE_WAIT)
	A, B, C := uuidOf(t, a), uuidOf(t, b), uuidOf(t, c)

	wantError(t, a.Delete(DOMAIN_BACKUP_DELETE_ALL|DOMAIN_BACKUP_DELETE_ALL_CHILDREN), ERR_INVALID_ARG)

	// B is merged into C, which then reads the same through A.
	if err := b.Delete(0); err != nil {
		t.Fatal(err)
	}
	list, err := dom.List(0)
	if got := uuids(t, list, err); !reflect.DeepEqual(got, sorted(A, C)) {
		t.Fatalf("after Delete(B): %v", got)
	}
	sameImage(t, tgt("c"), "qcow2", atC, "raw")
	if p := doc(t, c).Parent; p != A {
		t.Fatalf("C's parent after Delete(B): %s, want %s", p, A)
	}
	if _, err := os.Stat(tgt("b")); !os.IsNotExist(err) {
		t.Fatalf("B's target is still there: %v", err)
	}
	// The deleted backup's handle: ERR_NO_DOMAIN_BACKUP, then Free.
	_, err = b.XMLDesc(0)
	wantError(t, err, ERR_NO_DOMAIN_BACKUP)
	wantError(t, b.Delete(0), ERR_NO_DOMAIN_BACKUP)
	_, err = LookupByUUID(B, 0)
	if e := wantError(t, err, ERR_NO_DOMAIN_BACKUP); !strings.Contains(e.Message, B) {
		t.Errorf("the message does not name the UUID: %s", e.Message)
	}

	// ALL_CHILDREN from A: nothing left.
	if err := a.Delete(DOMAIN_BACKUP_DELETE_ALL_CHILDREN); err != nil {
		t.Fatal(err)
	}
	list, err = dom.List(0)
	if got := uuids(t, list, err); len(got) != 0 {
		t.Fatalf("after Delete(A, ALL_CHILDREN): %v", got)
	}

	// DELETE_ALL, and METADATA_ONLY keeps the files.
	x := mustCreate(t, dom, backupXML(tgt("x"), ""), DOMAIN_BACKUP_CREATE_WAIT)
	mustCreate(t, dom, "", DOMAIN_BACKUP_CREATE_WAIT)
	if err := x.Delete(DOMAIN_BACKUP_DELETE_ALL | DOMAIN_BACKUP_DELETE_METADATA_ONLY); err != nil {
		t.Fatal(err)
	}
	list, err = dom.List(0)
	if got := uuids(t, list, err); len(got) != 0 {
		t.Fatalf("after Delete(ALL): %v", got)
	}
	if _, err := os.Stat(tgt("x")); err != nil {
		t.Fatalf("METADATA_ONLY removed the data: %v", err)
	}
}

func TestDefaultTargetAndUndefine(t *testing.T) {
	dir := workDir(t)
	dom, _ := simpleDomain(t, dir, "raw", 4*MiB)
	tdir := filepath.Join(dir, "targets")
	if err := os.Mkdir(tdir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := dom.SetDefaultTarget("<target type='dir'><path>"+tdir+"</path></target>",
		DOMAIN_AFFECT_CONFIG); err != nil {
		t.Fatal(err)
	}
	b := mustCreate(t, dom, "", DOMAIN_BACKUP_CREATE_WAIT)
	want := filepath.Join(tdir, uuidOf(t, b), "vda.qcow2")
	if d := doc(t, b); len(d.Disks) != 1 || d.Disks[0].Target.File != want {
		t.Fatalf("default target not used (want %s): %+v", want, d)
	}
	wantError(t, dom.SetDefaultTarget("<target type='dir'><path>"+tdir+"/missing</path></target>",
		DOMAIN_AFFECT_CONFIG), ERR_INVALID_ARG)

	// Undefine refuses a domain with backups unless told.
	name, _ := dom.Name()
	wantError(t, dom.Undefine(0), ERR_OPERATION_INVALID)
	if d, err := testConn.LookupDomain(name); err != nil {
		t.Fatalf("a refused undefine removed the domain: %v", err)
	} else {
		d.Close()
	}
	// (The cleanup undefines it with DOMAIN_UNDEFINE_BACKUP.)
}

func TestErrors(t *testing.T) {
	dir := workDir(t)
	dom, _ := simpleDomain(t, dir, "raw", 4*MiB)

	_, err := dom.CreateXML("<domainbackup><disks>", 0)
	wantError(t, err, ERR_XML_ERROR)
	_, err = dom.CreateXML("<domainbackup><disks><disk name='vdz'/></disks></domainbackup>", 0)
	wantError(t, err, ERR_INVALID_ARG)
	_, err = dom.CreateXML("", 1<<9)
	if e := wantError(t, err, ERR_INVALID_ARG); !strings.Contains(e.Message, "unsupported flags (0x200)") {
		t.Errorf("message: %s", e.Message)
	}
	u := randomUUID()
	_, err = LookupByUUID(u, 0)
	if e := wantError(t, err, ERR_NO_DOMAIN_BACKUP); !strings.Contains(e.Message, u) ||
		e.Domain == FROM_NONE || e.Level != ERR_ERROR {
		t.Errorf("error: %#v", e)
	}
	// Wrapped errors are still found, and print as libvirt's Go errors do.
	wrapped := fmt.Errorf("nightly run: %w", err)
	var e *Error
	if !errors.As(wrapped, &e) || e.Code != ERR_NO_DOMAIN_BACKUP {
		t.Errorf("errors.As through a wrap: %v", wrapped)
	}
	if s := e.Error(); !strings.HasPrefix(s, "virError(Code=104, Domain=") || !strings.Contains(s, u) {
		t.Errorf("Error(): %s", s)
	}
	// libvirt's own errors.
	_, err = Connect("nosuchdriver:///x")
	var le *Error
	if !errors.As(err, &le) || le.Message == "" {
		t.Errorf("Connect to a bad URI: %v", err)
	}

	// Freed and closed handles.
	b := mustCreate(t, dom, "", DOMAIN_BACKUP_CREATE_WAIT)
	if err := b.Free(); err != nil {
		t.Fatal(err)
	}
	if err := b.Free(); err != nil {
		t.Fatalf("a second Free: %v", err)
	}
	_, err = b.XMLDesc(0)
	wantError(t, err, ERR_INVALID_ARG)
	wantError(t, b.Verify(0), ERR_INVALID_ARG)
	d2, err := testConn.LookupDomain(mustUUID(t, dom))
	if err != nil {
		t.Fatal(err)
	}
	d2.Close()
	_, err = d2.CreateXML("", 0)
	wantError(t, err, ERR_INVALID_ARG)
	var nilDom *Domain
	_, err = nilDom.List(0)
	wantError(t, err, ERR_INVALID_ARG)
	_, err = DomainFromPointer(nil)
	wantError(t, err, ERR_INVALID_ARG)
}

// Verify goes through dlsym: a library without virDomainBackupVerify says
// so with ERR_NO_SUPPORT; one with it checks the backup.
func TestVerify(t *testing.T) {
	dir := workDir(t)
	dom, _ := simpleDomain(t, dir, "raw", 4*MiB)
	b := mustCreate(t, dom, "", DOMAIN_BACKUP_CREATE_WAIT)
	err := b.Verify(0)
	if verifyExported() {
		if err != nil {
			t.Fatalf("Verify of a good backup: %v", err)
		}
		wantError(t, b.Verify(1<<3), ERR_INVALID_ARG)
		return
	}
	e := wantError(t, err, ERR_NO_SUPPORT)
	if !strings.Contains(e.Message, "not supported by this library build") {
		t.Fatalf("message: %s", e.Message)
	}
	t.Log("this library build has no virDomainBackupVerify: ERR_NO_SUPPORT checked")
}

// A virDomainPtr from the caller's own cgo code: the Domain keeps its own
// reference, so the caller's pointer can be freed first.
func TestDomainFromPointer(t *testing.T) {
	dir := workDir(t)
	dom, _ := simpleDomain(t, dir, "raw", 4*MiB)
	caller, err := testConn.LookupDomain(mustUUID(t, dom))
	if err != nil {
		t.Fatal(err)
	}
	d, err := DomainFromPointer(unsafe.Pointer(caller.ptr))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	caller.Close() // the caller frees its own reference
	b := mustCreate(t, d, "", DOMAIN_BACKUP_CREATE_WAIT)
	if p := params(t, b); p.State != DOMAIN_BACKUP_STATE_COMPLETED {
		t.Fatalf("%+v", p)
	}
	if u := mustUUID(t, d); u != mustUUID(t, dom) {
		t.Fatalf("DomainFromPointer: %s", u)
	}
}

// An unmanaged export of a shut-off test-driver domain over a unix socket,
// read with nbdcopy; FinishJob ends it. A second one is ended by a
// cancelled context (aborted).
func TestUnmanagedExport(t *testing.T) {
	dir := workDir(t)
	dom, vda := simpleDomain(t, dir, "qcow2", 16*MiB)
	sock := filepath.Join(dir, "nbd.sock")
	xml := "<domainbackup><server transport='unix' socket='" + sock + "'/>" +
		"<disks><disk name='vda' exportname='first'/></disks></domainbackup>"
	ex, err := dom.StartUnmanaged(xml, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Free()
	if x, _ := ex.XMLDesc(0); !strings.Contains(x, "socket='"+sock+"'") || !strings.Contains(x, "exportname='first'") {
		t.Fatalf("export XML:\n%s", x)
	}
	if running, err := ex.CheckJob(); !running || err != nil {
		t.Fatalf("CheckJob of a running export: %v %v", running, err)
	}
	got := filepath.Join(dir, "got.raw")
	run(t, "nbdcopy", "nbd+unix:///first?socket="+sock, got)
	sameImage(t, got, "raw", vda, "qcow2")
	if err := ex.FinishJob(context.Background()); err != nil {
		t.Fatalf("FinishJob of an export: %v", err)
	}
	if running, err := ex.CheckJob(); running || err != nil {
		t.Fatalf("CheckJob after the end: %v %v", running, err)
	}
	list, err := dom.List(0)
	if got := uuids(t, list, err); len(got) != 0 {
		t.Fatalf("an export is listed: %v", got)
	}

	ex2, err := dom.StartUnmanaged(xml, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ex2.Free()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ex2.FinishJob(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("FinishJob of an export with a cancelled context: %v", err)
	}
	if p := params(t, ex2); p.State != DOMAIN_BACKUP_STATE_CANCELLED {
		t.Fatalf("export after the abort: %+v", p)
	}
}

// ListAllBackups lists every backup of the catalog, those of a domain that
// no longer exists included: its Domain fails with ERR_NO_DOMAIN and its
// XML names the domain and holds its saved definition. The domain lives in
// a test-driver node file: once the file no longer defines it, no new
// connection (the library's) finds it, as after virsh undefine.
func TestListAllBackups(t *testing.T) {
	dir := workDir(t)
	path := makeDisk(t, filepath.Join(dir, "gone.raw"), "raw", 4*MiB, write{0, MiB, 0x61})
	node := filepath.Join(dir, "node.xml")
	name, domUUID := "lvb-go-gone-"+randomHex(4), randomUUID()
	def := strings.Replace(domainXML("test", name, disk{"vda", path, "raw"}), "<name>",
		"<uuid>"+domUUID+"</uuid><name>", 1)
	def = strings.Replace(def, "</domain>", "<test:runstate xmlns:test="+
		"'http://libvirt.org/schemas/domain/test/1.0'>5</test:runstate></domain>", 1)
	if err := os.WriteFile(node, []byte("<node>"+def+"</node>"), 0o600); err != nil {
		t.Fatal(err)
	}
	gone, err := LookupDomain("test://"+node, name)
	if err != nil {
		t.Fatal(err)
	}
	full := mustCreate(t, gone, "", DOMAIN_BACKUP_CREATE_WAIT)
	inc := mustCreate(t, gone, backupXML("", uuidOf(t, full)), DOMAIN_BACKUP_CREATE_WAIT)
	gone.Close()
	if err := os.WriteFile(node, []byte("<node></node>"), 0o600); err != nil {
		t.Fatal(err)
	}
	kept, _ := simpleDomain(t, dir, "raw", 4*MiB)
	other := mustCreate(t, kept, "", DOMAIN_BACKUP_CREATE_WAIT)
	want := []string{uuidOf(t, full), uuidOf(t, inc), uuidOf(t, other)}

	list, err := ListAllBackups(0)
	if err != nil {
		t.Fatal(err)
	}
	var mine []*Backup
	for _, b := range list {
		if u := uuidOf(t, b); u == want[0] || u == want[1] || u == want[2] {
			mine = append(mine, b)
		} else {
			b.Free()
		}
	}
	got := []string{}
	for _, b := range mine {
		got = append(got, uuidOf(t, b))
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ListAllBackups: mine in the order %v, want %v (oldest first)", got, want)
	}
	for _, b := range mine[:2] {
		_, err := b.Domain()
		wantError(t, err, ERR_NO_DOMAIN)
		if d := doc(t, b); d.Domain.Name != name || d.Domain.UUID != domUUID {
			t.Errorf("the XML of a gone domain's backup names %+v", d.Domain)
		}
		if x, _ := b.XMLDesc(0); !strings.Contains(x, "<definition>") ||
			!strings.Contains(x, "<name>"+name+"</name>") {
			t.Errorf("no saved definition in %s", x)
		}
	}
	if d, err := mine[2].Domain(); err != nil {
		t.Errorf("Domain of a defined domain's backup: %v", err)
	} else {
		d.Close()
	}
	for _, b := range mine {
		b.Free()
	}
	latest, err := ListAllBackups(DOMAIN_BACKUP_LIST_LATEST)
	if got := uuids(t, latest, err); !reflect.DeepEqual(got, []string{want[2]}) {
		t.Errorf("ListAllBackups(LATEST) = %v, want %v", got, want[2:])
	}
	_, err = ListAllBackups(DOMAIN_BACKUP_LIST_DESCENDANTS)
	wantError(t, err, ERR_INVALID_ARG)
	// The catalog forgets them (no domain is needed for that).
	if err := full.Delete(DOMAIN_BACKUP_DELETE_ALL); err != nil {
		t.Fatal(err)
	}
}
