# Before the files are unpacked, so that the config gets group icegate.
# The same user as /usr/lib/sysusers.d/icegate.conf describes.
getent group icegate >/dev/null || groupadd -r icegate
getent passwd icegate >/dev/null || \
    useradd -r -g icegate -d /var/lib/icegate -s /sbin/nologin -c "icegate TURN/STUN relay" icegate
exit 0
