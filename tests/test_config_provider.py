"""[provider.etcd] in the configuration file: defaults, paths, and strictness."""
import pytest

from sozu.config import ConfigError, EtcdProviderConfig, parse

BASE = 'command_socket = "sozu.sock"\n'


def test_no_provider_section_means_no_provider():
    assert parse(BASE, "/etc/sozu/c.toml").provider.etcd is None


def test_an_empty_etcd_section_takes_the_defaults():
    etcd = parse(BASE + "[provider.etcd]\n", "/etc/sozu/c.toml").provider.etcd
    assert etcd == EtcdProviderConfig()
    assert etcd.endpoints == ("http://127.0.0.1:2379",) and etcd.prefix == "/sozu/"


def test_every_setting_is_read_paths_relative_to_the_file():
    etcd = parse(BASE + """[provider.etcd]
endpoints = ["https://10.0.0.1:2379", "https://[::1]:2379"]
prefix = "/prod/sozu"
ca_certificate = "ca.pem"
certificate = "client.pem"
key = "client.key"
user = "sozu"
password = "secret"
heartbeat = 2
""", "/etc/sozu/c.toml").provider.etcd
    assert etcd.endpoints == ("https://10.0.0.1:2379", "https://[::1]:2379")
    assert etcd.prefix == "/prod/sozu/"
    assert (etcd.ca_certificate, etcd.certificate, etcd.key) == (
        "/etc/sozu/ca.pem", "/etc/sozu/client.pem", "/etc/sozu/client.key")
    assert (etcd.user, etcd.password, etcd.heartbeat) == ("sozu", "secret", 2)


@pytest.mark.parametrize("section, key", [
    ("endpointz = []", "provider.etcd.endpointz"),
    ('endpoints = ["127.0.0.1:2379"]', "provider.etcd.endpoints"),
    ('prefix = "sozu"', "provider.etcd.prefix"),
    ('user = "sozu"', "provider.etcd.password"),
    ('certificate = "c.pem"', "provider.etcd.key"),
    ("heartbeat = 0", "provider.etcd.heartbeat"),
])
def test_a_bad_setting_is_an_error_naming_the_key(section, key):
    with pytest.raises(ConfigError) as error:
        parse(BASE + "[provider.etcd]\n" + section + "\n", "/etc/sozu/c.toml")
    assert key in str(error.value)


def test_an_unknown_provider_is_an_error():
    with pytest.raises(ConfigError, match="provider.consul"):
        parse(BASE + "[provider.consul]\n", "/etc/sozu/c.toml")


def test_addresses_map_the_listeners_of_etcd_to_this_proxys():
    etcd = parse(BASE + '[provider.etcd]\naddresses = { "0.0.0.0:80" = "127.0.0.1:8080" }\n',
                 "/etc/sozu/c.toml").provider.etcd
    assert etcd.addresses == (("0.0.0.0:80", "127.0.0.1:8080"),)
    with pytest.raises(ConfigError, match='provider.etcd.addresses."0.0.0.0:80"'):
        parse(BASE + '[provider.etcd]\naddresses = { "0.0.0.0:80" = "here" }\n', "/etc/sozu/c.toml")


def test_config_check_json_shows_the_provider_but_not_its_password(tmp_path, capsys):
    import json

    from sozu.ctl.cli import main
    path = tmp_path / "c.toml"
    path.write_text(BASE + '[provider.etcd]\nuser = "sozu"\npassword = "secret"\n')
    assert main(["-c", str(path), "--json", "config", "check"]) == 0
    out = capsys.readouterr().out
    etcd = json.loads(out)["data"]["provider"]["etcd"]
    assert etcd["user"] == "sozu" and etcd["password"] == "(set)" and "secret" not in out
