# $1: 0 on erase, 1 on upgrade. %systemd_preun
if [ "$1" -eq 0 ]; then systemctl --no-reload disable --now icegate.service >/dev/null 2>&1 || :; fi
exit 0
