"""
Run twistd under cProfile and write the profile when it stops, for use as
``run.py --gateway-cmd``::

    python bench/run.py --only http --peers gateway --rounds 1 --gateway-cmd \\
      "{python} {bench}/profile_twistd.py $PWD/gateway.prof {twistd} -n --pidfile= edd-gateway \\
       --routes {routes} --listen tcp:{port}:interface=127.0.0.1"
    python -c "import pstats; pstats.Stats('gateway.prof').sort_stats('tottime').print_stats(30)"

``python -m cProfile twistd ...`` writes nothing: after a SIGTERM shutdown
twistd re-sends the signal to itself (to exit "killed by SIGTERM"), which
ends the process before cProfile's own exit code runs. So the profile is
written just before that self-signal, and also on a normal return.

Usage: python profile_twistd.py OUTPUT TWISTD [twistd arguments ...]
"""

from __future__ import annotations

import cProfile
import os
import sys


def main() -> None:
    output = sys.argv[1]
    sys.argv = sys.argv[2:]
    profile = cProfile.Profile()
    send_signal = os.kill

    def dump_then_kill(pid: int, signum: int) -> None:
        if pid == os.getpid():
            profile.disable()
            profile.dump_stats(output)
        send_signal(pid, signum)

    os.kill = dump_then_kill
    from twisted.scripts.twistd import run

    profile.enable()
    run()
    profile.disable()
    profile.dump_stats(output)


if __name__ == "__main__":
    main()
