package libvirtbackup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

const qemuURI = "qemu:///system"

// qemuConn opens qemu:///system (make check starts libvirtd first).
func qemuConn(t *testing.T) *Conn {
	t.Helper()
	c, err := Connect(qemuURI)
	if err != nil {
		t.Fatalf("cannot open %s (start libvirtd: sh scripts/start-libvirtd.sh): %v", qemuURI, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func virsh(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, "virsh", append([]string{"-q", "-c", qemuURI}, args...)...)
}

// guestWrite writes through QEMU as the guest would (qemu-io over the
// monitor), then flushes so readers outside QEMU see it.
func guestWrite(t *testing.T, name, cmd string) {
	t.Helper()
	for _, c := range []string{cmd, "flush"} {
		out := virsh(t, "qemu-monitor-command", name, "--hmp",
			fmt.Sprintf("qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"%s\"", c))
		if strings.Contains(out, "rror") {
			t.Fatalf("guest io %q: %s", c, out)
		}
	}
}

// A running TCG domain (no guest OS): full backup while it runs, a guest
// write through QEMU, an incremental backup of just that write; each
// compared byte for byte with the disk as it was.
func TestLiveBackupOfRunningQemuDomain(t *testing.T) {
	conn := qemuConn(t)
	dir := workDir(t)
	const size = 64 * MiB
	vda := makeDisk(t, filepath.Join(dir, "vda.qcow2"), "qcow2", size,
		write{0, MiB, 0xab}, write{size / 2, 512 << 10, 0x5a})
	dom := defineDomain(t, conn, "qemu", disk{"vda", vda, "qcow2"})
	name, _ := dom.Name()
	virsh(t, "start", name)
	at0 := snapshot(t, vda, "qcow2", filepath.Join(dir, "at0.raw"))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	fullT := filepath.Join(dir, "full.qcow2")
	full := mustCreate(t, dom, backupXML(fullT, ""), 0)
	if err := full.FinishJob(ctx); err != nil {
		t.Fatalf("live full backup: %v", err)
	}
	sameImage(t, fullT, "qcow2", at0, "raw")
	if p := params(t, full); p.State != DOMAIN_BACKUP_STATE_COMPLETED || p.Incremental || p.BytesTotal != size {
		t.Fatalf("live full parameters: %+v", p)
	}

	guestWrite(t, name, "write -P 0xcd 32M 4M")
	at1 := snapshot(t, vda, "qcow2", filepath.Join(dir, "at1.raw"))
	differentImage(t, at0, "raw", at1, "raw")
	incT := filepath.Join(dir, "inc.qcow2")
	inc := mustCreate(t, dom, backupXML(incT, uuidOf(t, full)), DOMAIN_BACKUP_CREATE_WAIT)
	sameImage(t, incT, "qcow2", at1, "raw")
	p := params(t, inc)
	// Read through libvirt's pull-mode export: the whole disk to go
	// through, only the 4 MiB the checkpoint's bitmap marks stored.
	if p.State != DOMAIN_BACKUP_STATE_COMPLETED || !p.Incremental || p.BytesTotal != size || p.BytesWritten != 4*MiB {
		t.Fatalf("live incremental parameters (want 4 MiB written): %+v", p)
	}
	if d := doc(t, inc); len(d.Disks) != 1 || d.Disks[0].Mode != "incremental" {
		t.Fatalf("live incremental XML: %+v", d)
	}

	// Restore into a running domain is refused; after it stops, the full
	// backup is restored in place.
	xml := "<domainbackup><uuid>" + uuidOf(t, full) + "</uuid></domainbackup>"
	wantError(t, Restore(xml, DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK), ERR_OPERATION_INVALID)
	virsh(t, "destroy", name)
	if err := Restore(xml, DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK); err != nil {
		t.Fatal(err)
	}
	sameImage(t, vda, "qcow2", at0, "raw")

	if err := full.Delete(DOMAIN_BACKUP_DELETE_ALL_CHILDREN); err != nil {
		t.Fatal(err)
	}
	list, err := dom.List(0)
	if got := uuids(t, list, err); len(got) != 0 {
		t.Fatalf("after Delete: %v", got)
	}
	if out := virsh(t, "checkpoint-list", name, "--name"); strings.TrimSpace(out) != "" {
		t.Fatalf("checkpoints left after Delete: %q", out)
	}
}

// The README's example program, built and run as a user would, on a
// shut-off QEMU domain (qemu:///system keeps the domain across processes;
// the example inherits this run's catalog, LIBVIRT_BACKUP_DIR).
func TestExampleBackupCycle(t *testing.T) {
	conn := qemuConn(t)
	dir := workDir(t)
	vda := makeDisk(t, filepath.Join(dir, "vda.qcow2"), "qcow2", 32*MiB,
		write{0, 2 * MiB, 0x42}, write{20 * MiB, MiB, 0x24})
	vdb := makeDisk(t, filepath.Join(dir, "vdb.raw"), "raw", 8*MiB, write{MiB, MiB, 0x99})
	at0a := snapshot(t, vda, "qcow2", filepath.Join(dir, "at0-vda.raw"))
	at0b := snapshot(t, vdb, "raw", filepath.Join(dir, "at0-vdb.raw"))
	dom := defineDomain(t, conn, "qemu", disk{"vda", vda, "qcow2"}, disk{"vdb", vdb, "raw"})
	name, _ := dom.Name()

	bin := filepath.Join(dir, "backupcycle")
	run(t, filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "./examples/backupcycle")
	out := run(t, bin, qemuURI, name)
	t.Logf("backupcycle: %q", out)

	sameImage(t, vda, "qcow2", at0a, "raw")
	sameImage(t, vdb, "raw", at0b, "raw")
	list, err := dom.List(0)
	if got := uuids(t, list, err); len(got) != 0 {
		t.Fatalf("the example left backups: %v", got)
	}
	// It made two backups: their catalog folders are gone with them.
	entries, _ := os.ReadDir(filepath.Join(os.Getenv("LIBVIRT_BACKUP_DIR"), mustUUID(t, dom)))
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("left in the catalog: %s", e.Name())
		}
	}
}
