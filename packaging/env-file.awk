# Turns a binary's `--help` (clap's long help, run with an empty
# environment so no current value shows) into a documented environment
# file for systemd's EnvironmentFile=: every option that has an environment
# variable becomes its description as comments and the variable, commented
# out at its default.
#
#   env -i auth-svc --help | awk -f env-file.awk
#
# Options without an environment variable (--help, --version) are left out.

# Prints one help line as comments, wrapped at about 76 columns.
function comment(line,   words, count, i, out) {
  count = split(line, words, " ")
  out = ""
  for (i = 1; i <= count; i++) {
    if (out != "" && length(out) + 1 + length(words[i]) > 72) {
      printf "#   %s\n", out
      out = ""
    }
    out = (out == "" ? words[i] : out " " words[i])
  }
  printf "#   %s\n", out
}

function flush(   i) {
  if (flag != "" && env != "") {
    printf "\n# %s\n", flag
    for (i = 1; i <= n; i++) comment(text[i])
    if (has_default) printf "#   Default: %s\n", (dflt == "\"\"" ? "(empty)" : dflt)
    value = has_default ? dflt : ""
    if (value == "\"\"") value = ""
    if (!takes_value && !has_default) value = "true"
    printf "#%s=%s\n", env, value
  }
  flag = ""; env = ""; dflt = ""; has_default = 0; takes_value = 0; n = 0
}

/^Options:/ { in_options = 1; next }
!in_options { next }

# An option's own line: "  -h, --help" or "      --listen <LISTEN>".
/^(  -[a-zA-Z0-9], |      )--[a-zA-Z0-9]/ {
  flush()
  flag = $0
  sub(/^ +/, "", flag)
  takes_value = (flag ~ /</)
  next
}

/^ +\[env: / {
  env = $0
  sub(/^ +\[env: /, "", env)
  sub(/[=\]].*$/, "", env)
  next
}

/^ +\[default: / {
  dflt = $0
  sub(/^ +\[default: /, "", dflt)
  sub(/\]$/, "", dflt)
  has_default = 1
  next
}

/^ *$/ { next }

{
  line = $0
  sub(/^ +/, "", line)
  text[++n] = line
}

END { flush() }
