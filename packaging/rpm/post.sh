# $1: 1 on install, 2 on upgrade.
SECRET=/etc/icegate/rest-secret
# A TURN REST secret of this host's own, made once; an existing file is left alone.
if [ ! -e "$SECRET" ]; then
    secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    (
        umask 077
        printf '%s\n' \
            "# TURN REST shared secret of this icegate, made when the package was installed." \
            "# Share it with the application server that mints TURN credentials. More secrets" \
            "# may follow, one per line: the first mints, all are accepted (rotation)." \
            "$secret" >"$SECRET.new"
    )
    chown root:icegate "$SECRET.new"
    chmod 0640 "$SECRET.new"
    mv "$SECRET.new" "$SECRET"
fi
install -d -o icegate -g icegate -m 0750 /var/lib/icegate
# %systemd_post
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || :; fi
if [ "$1" -eq 1 ]; then systemctl --no-reload preset icegate.service >/dev/null 2>&1 || :; fi
exit 0
