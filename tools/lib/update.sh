# Sourced by the build scripts: keeps an output's timestamp when its content is unchanged,
# so that build.rs (which embeds guest images and layouts) and cargo see nothing new and a
# second build with no change rebuilds nothing.

# mipsvisor_update_file NEW DEST: moves NEW over DEST if they differ (printing DEST), else
# deletes NEW. NEW should live outside DEST's directory: cargo watches that directory, and a
# scratch file made and removed there would count as a change.
mipsvisor_update_file() {
    local new=$1 dest=$2
    if [ -f "$dest" ] && cmp -s "$new" "$dest"; then
        rm -f "$new"
    else
        mkdir -p "$(dirname "$dest")"
        mv -f "$new" "$dest"
        echo "$dest"
    fi
}
