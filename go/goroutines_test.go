package libvirtbackup

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"libvirt.org/go/libvirtbackup/internal/twocalls"
)

const (
	goroutines        = 200
	callsPerGoroutine = 50
)

// Every goroutine gets its own error, without runtime.LockOSThread: 200
// goroutines make 50 calls each, failing ones whose message names what
// only that call passed (an unknown UUID, or flags no other call uses) and
// succeeding ones, and every error is checked. Run under -race by make.
func TestErrorsPerGoroutine(t *testing.T) {
	dir := workDir(t)
	dom, _ := simpleDomain(t, dir, "raw", 4*MiB)
	b := mustCreate(t, dom, "", DOMAIN_BACKUP_CREATE_WAIT)
	u := uuidOf(t, b)

	var wrong, failing, succeeding atomic.Int64
	var mu sync.Mutex
	var examples []string
	bad := func(format string, a ...interface{}) {
		wrong.Add(1)
		mu.Lock()
		if len(examples) < 5 {
			examples = append(examples, fmt.Sprintf(format, a...))
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for k := 0; k < callsPerGoroutine; k++ {
				id := g*callsPerGoroutine + k
				switch k % 3 {
				case 0: // succeeds: no error may show up
					succeeding.Add(1)
					x, err := b.XMLDesc(0)
					if err != nil || !strings.Contains(x, u) {
						bad("call %d: XMLDesc: %v", id, err)
					}
				case 1: // fails with flags unique to this call
					failing.Add(1)
					flags := DomainBackupDeleteFlags(id+1) << 8
					err := b.Delete(flags)
					var e *Error
					want := fmt.Sprintf("unsupported flags (0x%x)", uint32(flags))
					if !errors.As(err, &e) || e.Code != ERR_INVALID_ARG || !strings.Contains(e.Message, want) {
						bad("call %d: Delete(%#x): %v", id, flags, err)
					}
				case 2: // fails with a UUID unique to this call
					failing.Add(1)
					uuid := fmt.Sprintf("00000000-0000-4000-8000-%012d", id)
					_, err := LookupByUUID(uuid, 0)
					var e *Error
					if !errors.As(err, &e) || e.Code != ERR_NO_DOMAIN_BACKUP || !strings.Contains(e.Message, uuid) {
						bad("call %d: LookupByUUID(%s): %v", id, uuid, err)
					}
				}
			}
		}(g)
	}
	wg.Wait()
	t.Logf("%d goroutines x %d calls (%d failing, %d succeeding): %d wrong",
		goroutines, callsPerGoroutine, failing.Load(), succeeding.Load(), wrong.Load())
	if wrong.Load() != 0 {
		t.Fatalf("%d calls got an error that is not theirs, e.g.:\n%s", wrong.Load(), strings.Join(examples, "\n"))
	}
	// Nothing was deleted by the calls with bad flags.
	if p := params(t, b); p.State != DOMAIN_BACKUP_STATE_COMPLETED {
		t.Fatalf("the backup after the run: %+v", p)
	}
}

// The same load through the C API called directly, reading the error in a
// second cgo call: it shows the check above can see wrong errors. Its
// figure is logged, not asserted (it depends on the scheduler).
func TestErrorsPerGoroutineWithoutShim(t *testing.T) {
	dir := workDir(t)
	dom, _ := simpleDomain(t, dir, "raw", 4*MiB)
	u := uuidOf(t, mustCreate(t, dom, "", DOMAIN_BACKUP_CREATE_WAIT))

	var wrong, failing atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for k := 0; k < callsPerGoroutine; k++ {
				id := g*callsPerGoroutine + k
				if k%2 == 0 {
					twocalls.LookupByUUID(u) // succeeds, and resets its thread's error
					continue
				}
				failing.Add(1)
				uuid := fmt.Sprintf("00000000-0000-4000-8000-%012d", id)
				found, code, msg := twocalls.LookupByUUID(uuid)
				if found || code != int(ERR_NO_DOMAIN_BACKUP) || !strings.Contains(msg, uuid) {
					wrong.Add(1)
				}
			}
		}(g)
	}
	wg.Wait()
	t.Logf("without the shim (call, then read the error in a second cgo call): "+
		"%d goroutines x %d calls, %d failing: %d wrong", goroutines, callsPerGoroutine, failing.Load(), wrong.Load())
}
