package libvirtbackup

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const (
	MiB = 1 << 20
	// test:///default: its state lives in this process while a connection
	// to it is open; testConn stays open for the whole run, so the domains
	// the tests define there are seen by every other connection the
	// package or the library opens (LookupDomain, Restore, LookupByUUID).
	testURI = "test:///default"
)

var (
	testConn *Conn
	workRoot string // disks and targets of every test, removed at the end
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	workRoot, err = os.MkdirTemp("", "lvb-go-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(workRoot)
	// The catalog: never the default /var/lib/libvirt/backup.
	catalog := filepath.Join(workRoot, "catalog")
	if err := os.Mkdir(catalog, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Setenv("LIBVIRT_BACKUP_DIR", catalog)
	testConn, err = Connect(testURI)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot open", testURI, err)
		return 1
	}
	defer testConn.Close()
	return m.Run()
}

// workDir is a fresh folder for one test's disks and targets.
func workDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp(workRoot, strings.ReplaceAll(t.Name(), "/", "_")+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func randomUUID() string {
	h := randomHex(16)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// write is one qemu-io write: len bytes of pattern at off.
type write struct {
	off, len int64
	pattern  byte
}

// makeDisk creates an image of size bytes with the given writes.
func makeDisk(t *testing.T, path, format string, size int64, writes ...write) string {
	t.Helper()
	run(t, "qemu-img", "create", "-q", "-f", format, path, fmt.Sprint(size))
	writeDisk(t, path, format, writes...)
	return path
}

// writeDisk writes into an image of a shut-off domain.
func writeDisk(t *testing.T, path, format string, writes ...write) {
	t.Helper()
	for _, w := range writes {
		run(t, "qemu-io", "-f", format, "-c",
			fmt.Sprintf("write -P 0x%02x %d %d", w.pattern, w.off, w.len), path)
	}
}

// snapshot copies an image as it is now into a raw file.
func snapshot(t *testing.T, path, format, dst string) string {
	t.Helper()
	run(t, "qemu-img", "convert", "-U", "-f", format, "-O", "raw", path, dst)
	return dst
}

func virtualSize(t *testing.T, path string) int64 {
	t.Helper()
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", path).Output()
	if err == nil {
		err = json.Unmarshal(out, &info)
	}
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	return info.VirtualSize
}

// sameImage fails the test unless the two images hold the same bytes over
// the same virtual size (qemu-img compare, and equal virtual sizes).
func sameImage(t *testing.T, a, fa, b, fb string) {
	t.Helper()
	if sa, sb := virtualSize(t, a), virtualSize(t, b); sa != sb {
		t.Fatalf("virtual sizes differ: %s %d, %s %d", a, sa, b, sb)
	}
	out, err := exec.Command("qemu-img", "compare", "-U", "-f", fa, "-F", fb, a, b).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", a, b, err, out)
	}
}

// differentImage fails the test if the two images are equal.
func differentImage(t *testing.T, a, fa, b, fb string) {
	t.Helper()
	if exec.Command("qemu-img", "compare", "-U", "-q", "-f", fa, "-F", fb, a, b).Run() == nil {
		t.Fatalf("%s and %s are equal", a, b)
	}
}

type disk struct {
	dev, path, format string
}

func domainXML(kind, name string, disks ...disk) string {
	bus, osType := "", "<type>hvm</type>"
	if kind == "qemu" {
		bus, osType = " bus='virtio'", "<type arch='x86_64' machine='pc'>hvm</type>"
	}
	var devs strings.Builder
	for _, d := range disks {
		fmt.Fprintf(&devs, "<disk type='file' device='disk'><driver name='qemu' type='%s'/>"+
			"<source file='%s'/><target dev='%s'%s/></disk>", d.format, d.path, d.dev, bus)
	}
	return fmt.Sprintf("<domain type='%s'><name>%s</name><memory>65536</memory><os>%s</os>"+
		"<devices>%s</devices></domain>", kind, name, osType, devs.String())
}

// testDomain defines a shut-off domain on test:///default with these disks
// (through testConn); it is undefined with its backups' metadata when the
// test ends.
func testDomain(t *testing.T, disks ...disk) *Domain {
	t.Helper()
	return defineDomain(t, testConn, "test", disks...)
}

func defineDomain(t *testing.T, conn *Conn, kind string, disks ...disk) *Domain {
	t.Helper()
	name := "lvb-go-" + randomHex(6)
	d, err := conn.DefineDomain(domainXML(kind, name, disks...))
	if err != nil {
		t.Fatalf("define %s: %v", name, err)
	}
	t.Cleanup(func() {
		flags := DOMAIN_UNDEFINE_BACKUP
		if kind == "qemu" {
			exec.Command("virsh", "-q", "-c", "qemu:///system", "destroy", name).Run()
			flags |= DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
		}
		if err := d.Undefine(flags); err != nil {
			t.Errorf("undefine %s: %v", name, err)
		}
		d.Close()
	})
	return d
}

// simpleDomain: a test-driver domain with one disk vda of size bytes
// holding some data.
func simpleDomain(t *testing.T, dir, format string, size int64) (*Domain, string) {
	t.Helper()
	path := makeDisk(t, filepath.Join(dir, "vda."+format), format, size,
		write{0, MiB, 0xab}, write{size / 2, 512 << 10, 0x5a}, write{size - 256<<10, 256 << 10, 0x77})
	return testDomain(t, disk{"vda", path, format}), path
}

func mustCreate(t *testing.T, d *Domain, xml string, flags DomainBackupCreateFlags) *Backup {
	t.Helper()
	b, err := d.CreateXML(xml, flags)
	if err != nil {
		t.Fatalf("CreateXML %s: %v", xml, err)
	}
	t.Cleanup(func() { b.Free() })
	return b
}

func uuidOf(t *testing.T, b *Backup) string {
	t.Helper()
	u, err := b.UUIDString()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// backupXML: a backup of vda to target (default target if ""), on top of
// parent if not "".
func backupXML(target, parent string) string {
	x := "<domainbackup>"
	if parent != "" {
		x += "<parent><uuid>" + parent + "</uuid></parent>"
	}
	if target != "" {
		x += "<disks><disk name='vda'><target file='" + target + "'/></disk></disks>"
	}
	return x + "</domainbackup>"
}

// uuids gives the sorted UUIDs of a list and frees it.
func uuids(t *testing.T, list []*Backup, err error) []string {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, b := range list {
		out = append(out, uuidOf(t, b))
		b.Free()
	}
	sort.Strings(out)
	return out
}

func sorted(s ...string) []string {
	out := append([]string{}, s...)
	sort.Strings(out)
	return out
}

// wantError fails the test unless err is an *Error (found with errors.As)
// with this code and a message.
func wantError(t *testing.T, err error, code ErrorNumber) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error with code %d, got %v", code, err)
	}
	if e.Code != code {
		t.Fatalf("want code %d, got %v", code, e)
	}
	if e.Message == "" {
		t.Fatalf("error without message: %v", e)
	}
	return e
}

func params(t *testing.T, b *Backup) *BackupParameters {
	t.Helper()
	p, err := b.Parameters(0)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// backupDoc is the part of a backup's XML the tests read.
type backupDoc struct {
	UUID        string `xml:"uuid"`
	State       string `xml:"state"`
	Description string `xml:"description"`
	Parent      string `xml:"parent>uuid"`
	Domain      struct {
		UUID string `xml:"uuid,attr"`
		Name string `xml:"name,attr"`
	} `xml:"domain"`
	Disks []struct {
		Name   string `xml:"name,attr"`
		Mode   string `xml:"backupmode,attr"`
		Source struct {
			File string `xml:"file,attr"`
		} `xml:"source"`
		Target struct {
			File string `xml:"file,attr"`
		} `xml:"target"`
	} `xml:"disks>disk"`
}

func parseDoc(t *testing.T, x string) *backupDoc {
	t.Helper()
	var d backupDoc
	if err := xml.Unmarshal([]byte(x), &d); err != nil {
		t.Fatalf("backup XML: %v\n%s", err, x)
	}
	return &d
}

// doc gives the backup's XML, parsed.
func doc(t *testing.T, b *Backup) *backupDoc {
	t.Helper()
	x, err := b.XMLDesc(0)
	if err != nil {
		t.Fatal(err)
	}
	return parseDoc(t, x)
}
