package libvirtbackup

import (
	"os"
	"strings"
	"testing"
)

// The README's Go example is examples/backupcycle/main.go, word for word
// (TestExampleBackupCycle builds and runs that file).
func TestReadmeExampleIsTheExampleProgram(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	prog, err := os.ReadFile("examples/backupcycle/main.go")
	if err != nil {
		t.Fatal(err)
	}
	s := string(readme)
	i := strings.Index(s, "\n## Go\n")
	if i < 0 {
		t.Fatal("README has no \"## Go\" section")
	}
	s = s[i:]
	start := strings.Index(s, "\n```go\n")
	if start < 0 {
		t.Fatal("the Go section has no ```go block")
	}
	s = s[start+len("\n```go\n"):]
	end := strings.Index(s, "```\n")
	if end < 0 || s[:end] != string(prog) {
		t.Fatalf("the README's Go example differs from examples/backupcycle/main.go")
	}
}
