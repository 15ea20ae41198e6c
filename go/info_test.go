package libvirtbackup

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func onDisk(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// UUID, UUIDString, Parent/GetParent, Info and its shortcuts on a full and
// an incremental backup.
func TestInfoUUIDAndParent(t *testing.T) {
	dir := workDir(t)
	dom, vda := simpleDomain(t, dir, "raw", 4*MiB)
	t0 := time.Now().Truncate(time.Second)
	fullT, incT := filepath.Join(dir, "full.qcow2"), filepath.Join(dir, "inc.qcow2")
	full := mustCreate(t, dom, "<domainbackup><description>nightly</description><disks>"+
		"<disk name='vda'><target file='"+fullT+"'/></disk></disks></domainbackup>",
		DOMAIN_BACKUP_CREATE_WAIT)
	writeDisk(t, vda, "raw", write{MiB, 64 << 10, 0x42})
	inc := mustCreate(t, dom, backupXML(incT, uuidOf(t, full)), DOMAIN_BACKUP_CREATE_WAIT)
	t1 := time.Now()
	du, _ := dom.UUIDString()
	dn, _ := dom.Name()

	for _, b := range []*Backup{full, inc} {
		info, err := b.Info()
		if err != nil {
			t.Fatal(err)
		}
		x, _ := b.XMLDesc(0)
		doc := parseDoc(t, x)
		raw, err := b.UUID()
		if err != nil {
			t.Fatal(err)
		}
		if u := uuidOf(t, b); info.UUID != u || doc.UUID != u ||
			strings.ReplaceAll(u, "-", "") != hexOf(raw[:]) {
			t.Errorf("UUIDs: info %s, XML %s, UUIDString %s, UUID %x", info.UUID, doc.UUID, u, raw)
		}
		if info.Time.Before(t0) || info.Time.After(t1) || info.State != DOMAIN_BACKUP_STATE_COMPLETED ||
			info.DomainName != dn || info.DomainUUID != du || len(info.Disks) != 1 {
			t.Errorf("Info: %+v", info)
		}
		d := info.Disks[0]
		if d.Name != "vda" || d.Type != "file" || d.Format != "qcow2" || d.Source != vda ||
			d.StoredSize != onDisk(t, d.Target) || info.StoredSize != d.StoredSize {
			t.Errorf("disk: %+v", d)
		}
	}
	fi, _ := full.Info()
	ii, _ := inc.Info()
	if fi.Kind != BackupKindFull || ii.Kind != BackupKindIncremental || fi.ParentUUID != "" ||
		ii.ParentUUID != uuidOf(t, full) || fi.Description != "nightly" || ii.Description != "" ||
		fi.Disks[0].Mode != "full" || ii.Disks[0].Mode != "incremental" ||
		fi.Disks[0].Target != fullT || ii.Disks[0].Target != incT || ii.StoredSize >= fi.StoredSize {
		t.Errorf("full %+v\nincremental %+v", fi, ii)
	}
	if k, _ := inc.Kind(); k != BackupKindIncremental {
		t.Errorf("Kind: %s", k)
	}
	if s, _ := inc.State(); s != DOMAIN_BACKUP_STATE_COMPLETED {
		t.Errorf("State: %v", s)
	}
	if d, _ := full.Description(); d != "nightly" {
		t.Errorf("Description: %q", d)
	}
	if tm, _ := full.Time(); !tm.Equal(fi.Time) {
		t.Errorf("Time: %v", tm)
	}
	if disks, _ := inc.Disks(); len(disks) != 1 || disks[0].Target != incT {
		t.Errorf("Disks: %+v", disks)
	}
	if n, _ := inc.StoredSize(); n != ii.StoredSize {
		t.Errorf("StoredSize: %d", n)
	}

	p, err := inc.Parent()
	if err != nil || p == nil || uuidOf(t, p) != uuidOf(t, full) || p == full {
		t.Fatalf("Parent of the incremental: %v, %v", p, err)
	}
	if err := p.Free(); err != nil {
		t.Fatal(err)
	}
	if p, err := full.Parent(); p != nil || err != nil {
		t.Errorf("Parent of the full: %v, %v", p, err)
	}
	_, err = full.GetParent(0)
	wantError(t, err, ERR_NO_DOMAIN_BACKUP)
	_, err = inc.GetParent(1)
	wantError(t, err, ERR_INVALID_ARG)
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	var s strings.Builder
	for _, c := range b {
		s.WriteByte(digits[c>>4])
		s.WriteByte(digits[c&15])
	}
	return s.String()
}

// Parent follows a merge; a deleted backup's accessors fail with
// ERR_NO_DOMAIN_BACKUP; a freed Backup's with ERR_INVALID_ARG.
func TestParentAfterDelete(t *testing.T) {
	dir := workDir(t)
	dom, _ := simpleDomain(t, dir, "raw", 4*MiB)
	full := mustCreate(t, dom, backupXML("", ""), DOMAIN_BACKUP_CREATE_WAIT)
	mid := mustCreate(t, dom, backupXML("", uuidOf(t, full)), DOMAIN_BACKUP_CREATE_WAIT)
	leaf := mustCreate(t, dom, backupXML("", uuidOf(t, mid)), DOMAIN_BACKUP_CREATE_WAIT)
	midU := uuidOf(t, mid)
	if err := mid.Delete(0); err != nil {
		t.Fatal(err)
	}
	p, err := leaf.Parent()
	if err != nil || p == nil || uuidOf(t, p) != uuidOf(t, full) {
		t.Fatalf("Parent after the merge: %v, %v", p, err)
	}
	p.Free()
	_, err = mid.Parent()
	wantError(t, err, ERR_NO_DOMAIN_BACKUP)
	_, err = mid.UUID()
	wantError(t, err, ERR_NO_DOMAIN_BACKUP)
	_, err = mid.Info()
	wantError(t, err, ERR_NO_DOMAIN_BACKUP)
	if u, err := mid.UUIDString(); u != midU || err != nil { // read before, kept
		t.Errorf("UUIDString of a deleted backup: %s, %v", u, err)
	}
	leaf.Free()
	_, err = leaf.GetParent(0)
	wantError(t, err, ERR_INVALID_ARG)
	_, err = leaf.UUID()
	wantError(t, err, ERR_INVALID_ARG)
}

// A running backup says running, then cancelled; a missing target file
// has no known size.
func TestInfoStateAndUnknownSize(t *testing.T) {
	dir := workDir(t)
	dom, _ := simpleDomain(t, dir, "raw", 4*MiB)
	target := filepath.Join(dir, "b.qcow2")
	b := mustCreate(t, dom, backupXML(target, ""), DOMAIN_BACKUP_CREATE_WAIT)
	if err := os.Rename(target, target+".away"); err != nil {
		t.Fatal(err)
	}
	info, err := b.Info()
	if err != nil || info.Disks[0].StoredSize != -1 || info.StoredSize != -1 {
		t.Errorf("sizes of a missing target: %+v, %v", info, err)
	}
	if err := os.Rename(target+".away", target); err != nil {
		t.Fatal(err)
	}
	if n, _ := b.StoredSize(); n <= 0 {
		t.Errorf("StoredSize %d", n)
	}

	big := filepath.Join(dir, "big.raw")
	run(t, "truncate", "-s", "0", big)
	f, err := os.OpenFile(big, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 16*MiB)
	for i := range chunk {
		chunk[i] = byte(i*7 + i>>9)
	}
	for i := 0; i < 64; i++ { // 1 GiB of data, no holes
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	bigDom := testDomain(t, disk{"vda", big, "raw"})
	running := mustCreate(t, bigDom, "", 0)
	if s, err := running.State(); s != DOMAIN_BACKUP_STATE_RUNNING || err != nil {
		t.Errorf("State of a running backup: %v, %v", s, err)
	}
	if err := running.AbortJob(0); err != nil {
		t.Fatal(err)
	}
	if s, err := running.State(); s != DOMAIN_BACKUP_STATE_CANCELLED || err != nil {
		t.Errorf("State after AbortJob: %v, %v", s, err)
	}
}
