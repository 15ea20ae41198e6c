"""TLS exports (virDomainBackupStartUnmanaged with <server tls='yes'>): a
TCP NBD export readable only by clients holding a certificate of the
server's CA, read here with libnbd's tools (nbds:// URIs with
tls-certificates=DIR) byte for byte against the disk. The exports
qemu-storage-daemon serves (shut-off domains, stored backups) take their
certificates from $LIBVIRT_BACKUP_TLS_X509_DIR (a throw-away CA made by
scripts/tls-test-certs.sh per test session); a running QEMU domain's, served
by libvirt's pull-mode job, from libvirt's backup certificate folder, the
default /etc/pki/qemu, where scripts/start-libvirtd.sh puts a throw-away CA
(client side in /etc/pki/libvirt-backup-test/client). A client without a
certificate (plain nbd://, or nbds:// with the CA alone) is refused; a
certificate folder that is missing or unsafe is refused before anything
starts; a non-loopback address needs TLS."""

import os
import shutil
import socket
import stat
import subprocess

import pytest

from conftest import (MiB, Nbd, VIR_ERR_INVALID_ARG, assert_byte_exact, backup_uuid,
                      backup_xml_for, expect_error, export_of, free_port, lib, live_snapshot,
                      nbd_copy, nbd_reachable, write_disk)

VIR_ERR_CONFIG_UNSUPPORTED = 67
HERE = os.path.dirname(os.path.abspath(__file__))
CERTS_SCRIPT = os.path.join(os.path.dirname(HERE), "scripts", "tls-test-certs.sh")
LIBVIRT_SERVER_DIR = "/etc/pki/qemu"
LIBVIRT_CLIENT_DIR = "/etc/pki/libvirt-backup-test/client"


def make_certs(base):
    """A CA with server and client certificates under `base`: (server
    folder, client folder, a client folder holding the CA alone)."""
    server, client, bare = (os.path.join(base, n) for n in ("server", "client", "ca-only"))
    subprocess.run(["sh", CERTS_SCRIPT, server, client, os.path.join(base, "ca")], check=True,
                   stdout=subprocess.DEVNULL)
    os.mkdir(bare, 0o700)
    shutil.copy(os.path.join(client, "ca-cert.pem"), bare)
    return server, client, bare


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def tenv(env, certs, monkeypatch):
    """env, with the library's qemu-storage-daemon exports using `certs`."""
    monkeypatch.setenv("LIBVIRT_BACKUP_TLS_X509_DIR", certs[0])
    return env


def tls_server(host="127.0.0.1", port=None):
    port = port or free_port()
    return port, (f"<server transport='tcp' name='{host}' port='{port}' tls='yes'/>")


def uri(port, export, client_dir=None, host="127.0.0.1"):
    """libnbd's URI: nbds:// (TLS) with `client_dir`'s certificates, or a
    plain nbd:// one without."""
    if client_dir is None:
        return f"nbd://{host}:{port}/{export}"
    return f"nbds://{host}:{port}/{export}?tls-certificates={client_dir}"


def nbdinfo_fails(u):
    r = subprocess.run(["nbdinfo", "--size", u], capture_output=True, text=True)
    assert r.returncode != 0, f"{u} was readable"
    return r.stderr


def check_tls_export(env, port, export, client, bare, want, want_fmt, host="127.0.0.1"):
    """The export reads byte for byte as `want` through TLS with the client
    certificate; a plain client and a TLS client without a certificate are
    refused."""
    got = nbd_copy(uri(port, export, client, host), env.path(f"got-{export}-{port}.raw"))
    assert_byte_exact(got, "raw", want, want_fmt)
    os.unlink(got)
    assert "TLS" in nbdinfo_fails(uri(port, export, host=host))
    nbdinfo_fails(uri(port, export, bare, host))


def unmanaged(server_xml, disks=""):
    return f"<domainbackup>{server_xml}{disks}</domainbackup>"


# ------------------------------------------------- qemu-storage-daemon
def test_shut_off_domain_export_over_tls(tenv, certs):
    env = tenv
    _, client, bare = certs
    disk = env.disk("off.raw", 8 * MiB, writes=[(1 * MiB, 1 * MiB, 0x61)])
    dom = env.domain(disks=[("vda", disk, "raw")])
    port, server = tls_server()
    b = env.start_unmanaged(dom, unmanaged(server))
    assert export_of(b)[0] == {"transport": "tcp", "name": "127.0.0.1", "port": str(port),
                               "tls": "yes"}
    check_tls_export(env, port, "vda", client, bare, disk, "raw")
    assert lib.virDomainBackupFinishJob(b, 0) == 0
    assert not nbd_reachable(uri(port, "vda", client))


def test_shut_off_qemu_domain_export_over_tls(tenv, certs, qemu_conn):
    env = tenv
    env.qemu = qemu_conn
    _, client, bare = certs
    dom = env.qemu_domain(size=16 * MiB, writes=[(3 * MiB, 2 * MiB, 0x62)], start=False)
    image = dom.disks[0][1]
    port, server = tls_server()
    b = env.start_unmanaged(dom, unmanaged(server))
    check_tls_export(env, port, "vda", client, bare, image, "qcow2")
    assert lib.virDomainBackupAbortJob(b, 0) == 0


def lan_address():
    """An address of this host that is not loopback (None if it has none)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            a = s.getsockname()[0]
    except OSError:
        return None
    return None if a.startswith("127.") else a


def test_tls_export_on_every_address(tenv, certs):
    """With TLS (clients checked) the server may listen on 0.0.0.0, and is
    read there through the loopback and the LAN address alike."""
    env = tenv
    _, client, bare = certs
    disk = env.disk("any.raw", 4 * MiB, writes=[(0, 1 * MiB, 0x63)])
    dom = env.domain(disks=[("vda", disk, "raw")])
    port, server = tls_server("0.0.0.0")
    b = env.start_unmanaged(dom, unmanaged(server))
    assert export_of(b)[0]["name"] == "0.0.0.0" and export_of(b)[0]["tls"] == "yes"
    check_tls_export(env, port, "vda", client, bare, disk, "raw")
    lan = lan_address()
    if lan:
        check_tls_export(env, port, "vda", client, bare, disk, "raw", host=lan)
    assert lib.virDomainBackupFinishJob(b, 0) == 0


def stored_xml(uuid, server_xml):
    return f"<domainbackup><uuid>{uuid}</uuid>{server_xml}</domainbackup>"


def test_stored_backup_export_over_tls(tenv, certs):
    env = tenv
    _, client, bare = certs
    disk = env.disk("st.raw", 8 * MiB, writes=[(2 * MiB, 1 * MiB, 0x64)])
    dom = env.domain(disks=[("vda", disk, "raw")])
    full = env.backup(dom, backup_xml_for({"vda": env.path("full.qcow2")}))
    then = env.snapshot(disk, "then.raw")
    write_disk(disk, "raw", [(2 * MiB, 4096, 0x65)])
    port, server = tls_server()
    b = lib.virDomainBackupStartUnmanaged(None, stored_xml(backup_uuid(full), server).encode(), 0)
    assert b, lib.virDomainBackupGetLastErrorMessage()
    env._handles.append(b)
    assert export_of(b)[0]["tls"] == "yes"
    check_tls_export(env, port, "vda", client, bare, then, "raw")
    assert lib.virDomainBackupFinishJob(b, 0) == 0


# ---------------------------------------------------------- refusals
def scratch(env):
    if not os.path.isdir(env.catalog):
        return []
    return [n for n in os.listdir(env.catalog) if n.startswith(".scratch")]


def refused(dom, xml, port):
    """StartUnmanaged fails and nothing serves on `port`."""
    b = lib.virDomainBackupStartUnmanaged(dom, xml.encode(), 0)
    if b:
        lib.virDomainBackupAbortJob(b, 0)
        lib.virDomainBackupFree(b)
        raise AssertionError("the export started")
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_unusable_certificate_folders_are_refused(env, certs, monkeypatch, tmp_path):
    """Each case names the file at fault and starts nothing: a missing
    folder, a missing file, a key others can read, a key behind a symbolic
    link, a folder anyone can write to."""
    dom = env.domain(size=4 * MiB)
    full = env.backup(dom, backup_xml_for({"vda": env.path("full.qcow2")}))

    def copy_of(name):
        d = tmp_path / name
        shutil.copytree(certs[0], d)
        return d

    missing_key = copy_of("nokey")
    os.unlink(missing_key / "server-key.pem")
    loose_key = copy_of("loose")
    os.chmod(loose_key / "server-key.pem", 0o644)
    linked_key = copy_of("linked")
    os.rename(linked_key / "server-key.pem", tmp_path / "elsewhere-key.pem")
    os.symlink(tmp_path / "elsewhere-key.pem", linked_key / "server-key.pem")
    open_dir = copy_of("open")
    os.chmod(open_dir, 0o777)
    cases = [
        (tmp_path / "nonexistent", "nonexistent", "does not exist"),
        (missing_key, "server-key.pem", "missing"),
        (loose_key, "server-key.pem", "mode 644"),
        (linked_key, "server-key.pem", "symbolic link"),
        (open_dir, "open", "writable by group or others"),
    ]
    for folder, name, why in cases:
        monkeypatch.setenv("LIBVIRT_BACKUP_TLS_X509_DIR", str(folder))
        port, server = tls_server()
        refused(dom, unmanaged(server), port)
        expect_error(VIR_ERR_CONFIG_UNSUPPORTED, "TLS certificate folder", name, why)
        refused(None, stored_xml(backup_uuid(full), server), port)
        expect_error(VIR_ERR_CONFIG_UNSUPPORTED, name, why)
    assert scratch(env) == []


def test_tls_needs_tcp_and_plain_tcp_needs_loopback(tenv):
    env = tenv
    dom = env.domain(size=4 * MiB)
    sock = env.path("tls.sock")
    xml = unmanaged(f"<server transport='unix' socket='{sock}' tls='yes'/>")
    assert lib.virDomainBackupStartUnmanaged(dom, xml.encode(), 0) is None
    expect_error(VIR_ERR_CONFIG_UNSUPPORTED, "tls='yes' is for transport='tcp'")
    assert not os.path.exists(sock)
    for tls in ("", " tls='no'"):
        port = free_port()
        xml = unmanaged(f"<server transport='tcp' name='0.0.0.0' port='{port}'{tls}/>")
        refused(dom, xml, port)
        expect_error(VIR_ERR_INVALID_ARG, "not a loopback address", "readable by anyone")


# ------------------------------------------------- libvirt's pull mode
def libvirt_certs():
    """The client folder matching libvirt's backup certificates (made by
    scripts/start-libvirtd.sh), else skip."""
    try:
        with open(os.path.join(LIBVIRT_SERVER_DIR, "ca-cert.pem"), "rb") as a, \
                open(os.path.join(LIBVIRT_CLIENT_DIR, "ca-cert.pem"), "rb") as b:
            if a.read() == b.read():
                return LIBVIRT_CLIENT_DIR
    except OSError:
        pass
    pytest.skip(f"{LIBVIRT_SERVER_DIR} does not hold the test CA of scripts/start-libvirtd.sh")


def test_running_domain_export_over_tls(qenv, tmp_path):
    env = qenv
    client = libvirt_certs()
    bare = tmp_path / "ca-only"
    bare.mkdir(mode=0o700)
    shutil.copy(os.path.join(client, "ca-cert.pem"), bare)
    dom = env.qemu_domain(size=16 * MiB, writes=[(5 * MiB, 3 * MiB, 0x66)])
    image = dom.disks[0][1]
    port, server = tls_server()
    b = env.start_unmanaged(dom, unmanaged(server))
    assert export_of(b)[0]["tls"] == "yes"
    # The point in time: the guest writes after the start; the export
    # keeps what the disk held.
    then = live_snapshot(image, "qcow2", env.path("then.raw"))
    dom.guest_io("write -P 0x67 5M 1M")
    check_tls_export(env, port, "vda", client, str(bare), then, "raw")
    assert lib.virDomainBackupFinishJob(b, 0) == 0
    assert not nbd_reachable(uri(port, "vda", client))


def test_running_domain_export_on_every_address(qenv):
    env = qenv
    client = libvirt_certs()
    dom = env.qemu_domain(size=4 * MiB)
    port, server = tls_server("0.0.0.0")
    b = env.start_unmanaged(dom, unmanaged(server))
    r = subprocess.run(["nbdinfo", "--size", uri(port, "vda", client)], capture_output=True,
                       text=True, check=True)
    assert int(r.stdout) == 4 * MiB
    assert lib.virDomainBackupAbortJob(b, 0) == 0



def test_libvirt_folder_checked_before_the_job_starts(qenv):
    """libvirt's certificate folder (as /etc/libvirt/qemu.conf names it) is
    checked like the library's own: a key others can read is refused
    before libvirt's job starts."""
    env = qenv
    libvirt_certs()
    dom = env.qemu_domain(size=4 * MiB)
    key = os.path.join(LIBVIRT_SERVER_DIR, "server-key.pem")
    mode = stat.S_IMODE(os.stat(key).st_mode)
    port, server = tls_server()
    os.chmod(key, 0o604)
    try:
        refused(dom, unmanaged(server), port)
    finally:
        os.chmod(key, mode)
    expect_error(VIR_ERR_CONFIG_UNSUPPORTED, key, "mode 604")
    assert not dom.job_active()
