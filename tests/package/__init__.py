"""The Debian package (test_deb: build, install, run the service) and cubed.systemd."""
