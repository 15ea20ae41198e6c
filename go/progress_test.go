package libvirtbackup

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Per-disk progress (BackupParameters.DiskProgress, "disk.<i>.*") of a
// two-disk job under a <bandwidth> limit, read from several goroutines
// while it runs; a bad <bandwidth> refused.
func TestDiskProgressUnderBandwidth(t *testing.T) {
	dir := workDir(t)
	vda := makeDisk(t, filepath.Join(dir, "bw-vda.raw"), "raw", 8*MiB, write{0, 8 * MiB, 0x41})
	vdb := makeDisk(t, filepath.Join(dir, "bw-vdb.raw"), "raw", 4*MiB, write{0, 4 * MiB, 0x42})
	dom := testDomain(t, disk{"vda", vda, "raw"}, disk{"vdb", vdb, "raw"})
	ta, tb := filepath.Join(dir, "bw-a.qcow2"), filepath.Join(dir, "bw-b.qcow2")
	doc := func(rate string) string {
		return "<domainbackup><bandwidth bytes='" + rate + "'/><disks>" +
			"<disk name='vda'><target file='" + ta + "'/></disk>" +
			"<disk name='vdb'><target file='" + tb + "'/></disk></disks></domainbackup>"
	}
	for _, bad := range []string{"0", "-3", "1G", "x"} {
		_, err := dom.CreateXML(doc(bad), 0)
		if e := wantError(t, err, ERR_XML_ERROR); !strings.Contains(e.Message, "bytes='"+bad+"'") {
			t.Fatalf("bandwidth %q: %v", bad, e)
		}
	}
	// 12 MiB at 6 MiB/s: about 2 s.
	b := mustCreate(t, dom, doc(fmt.Sprint(6*MiB)), 0)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				p, err := b.Parameters(0)
				if err != nil {
					errs <- err
					return
				}
				d := p.DiskProgress
				if len(d) != 2 || d[0].Name != "vda" || d[1].Name != "vdb" ||
					d[0].BytesTotal != 8*MiB || d[1].BytesTotal != 4*MiB ||
					d[0].BytesProcessed+d[1].BytesProcessed != p.BytesProcessed {
					errs <- fmt.Errorf("per-disk parameters: %+v", p)
					return
				}
				if p.State != DOMAIN_BACKUP_STATE_RUNNING {
					return
				}
				time.Sleep(30 * time.Millisecond)
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := b.FinishJob(ctx); err != nil {
		t.Fatalf("FinishJob: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	p := params(t, b)
	want := []DiskProgress{{"vda", 8 * MiB, 8 * MiB}, {"vdb", 4 * MiB, 4 * MiB}}
	if len(p.DiskProgress) != 2 || p.DiskProgress[0] != want[0] || p.DiskProgress[1] != want[1] ||
		p.BytesProcessed != 12*MiB {
		t.Fatalf("after the job: %+v", p)
	}
	if p.Elapsed < 1500*time.Millisecond {
		t.Fatalf("12 MiB at 6 MiB/s took %v", p.Elapsed)
	}
	sameImage(t, ta, "qcow2", vda, "raw")
	sameImage(t, tb, "qcow2", vdb, "raw")
}
