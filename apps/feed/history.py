"""The day so far, as the pure payload builders need it: foreign-flow samples
(for buy/sell speed) and index sparkline points, kept by the leader across
cycles and started again each trading day."""

import json
import logging
import math
from collections import deque

from stocktracker.lib.catalogue import FOREIGN, INDEX
from stocktracker.lib.state import get_state
from stocktracker.lib.state.frames import epoch_day

from . import market
from .payloads import board_flow, index_value
from .simulator import POINT_EVERY_S

log = logging.getLogger("apps.feed")

FLOW_WINDOW_MS = 120_000  # foreign-flow samples kept for the speed


class IntradayHistory:
    def __init__(self):
        self.day = None
        self.flow = deque()  # (source_ms, board foreign buy value, sell value)
        self.points = {}  # index code -> [[ms, value], ...] on the POINT_EVERY_S grid

    async def start_day(self, day):
        """Forget the previous day; a restarted or new leader picks up today's
        sparkline from the latest index frame."""
        if day == self.day:
            return
        self.day = day
        self.flow.clear()
        self.points = {}
        raw = await get_state().latest_get(INDEX)
        if raw:
            try:
                frame = json.loads(raw)
                if epoch_day(str(frame.get("epoch"))) == day:
                    for entry in frame["data"]["indices"]:
                        points = entry["points"]
                        # The last point is the then-current value unless it lies on the grid.
                        if len(points) >= 2 and points[-1][0] - points[-2][0] < POINT_EVERY_S * 1000:
                            points = points[:-1]
                        self.points[entry["code"]] = points
            except (ValueError, KeyError, TypeError):
                log.warning("could not read sparkline points from the latest index frame")

    def seed(self, points_by_code):
        """Sparkline points a source back-filled (SSI: IntradayOhlc), before the ones tracked here."""
        for code, points in (points_by_code or {}).items():
            fixed = self.points.get(code, [])
            first = fixed[0][0] if fixed else math.inf
            self.points[code] = [list(p) for p in points if p[0] < first] + fixed

    def track(self, data, needs):
        """Record this cycle; returns {stream: extra builder arguments}."""
        extras = {}
        if FOREIGN in needs:
            totals = board_flow(data)
            self.flow.append((data.source_ms, totals["buy_value"], totals["sell_value"]))
            while self.flow and self.flow[0][0] < data.source_ms - FLOW_WINDOW_MS:
                self.flow.popleft()
            extras[FOREIGN] = (list(self.flow),)
        if INDEX in needs:
            if data.points is not None:
                points = data.points
            else:
                points = {}
                for code in market.INDEX_CODES:
                    value = index_value(data, code)
                    fixed = self.points.setdefault(code, [])
                    if value is None:
                        points[code] = list(fixed)
                        continue
                    if data.phase in market.OPEN_PHASES and (
                        not fixed or data.source_ms >= fixed[-1][0] + POINT_EVERY_S * 1000
                    ):
                        fixed.append([data.source_ms, value])
                    current = [data.source_ms, value]
                    points[code] = list(fixed) if fixed and fixed[-1] == current else [*fixed, current]
            extras[INDEX] = (points,)
        return extras
