"""``python -m minigrad.distributed._child DIR``: the process ``isolation.py`` starts in a
new loopback-only network namespace; runs the pickled ``train`` call found in ``DIR``."""
from __future__ import annotations

import os
import pickle
import sys
import traceback

from minigrad.distributed import netns
from minigrad.distributed.errors import DistributedError


def main(tmp):
    with open(os.path.join(tmp, "netns"), "w") as f:
        f.write(str(netns.namespace_inode()))
    try:
        netns.bring_loopback_up()
        if not netns.only_loopback():
            raise DistributedError("driver", f"child namespace has interfaces "
                                   f"{netns.interfaces()}, not just lo")
        with open(os.path.join(tmp, "job.pkl"), "rb") as f:
            make_cost, params, dataset, optimizer, kwargs = pickle.load(f)
        from minigrad.distributed.driver import train

        result = train(make_cost, params, dataset, optimizer, **kwargs)
        status = ("ok", [p.get_value() for p in params], result)
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
        try:
            pickle.dumps(err)
            status = ("error", err)
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            status = ("error", DistributedError("driver", f"{type(err).__name__}: {err}",
                                                traceback.format_exc()))
    tmp_file = os.path.join(tmp, "result.pkl.tmp")
    with open(tmp_file, "wb") as f:
        pickle.dump(status, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp_file, os.path.join(tmp, "result.pkl"))


if __name__ == "__main__":
    main(sys.argv[1])
