"""Live sessions console: every open socket on every process, and a
"disconnect" action that closes the chosen ones wherever they are held."""

from datetime import datetime

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils import timezone

from stocktracker.lib.state import StateUnavailable, get_state

from .models import LiveSession
from .protocol import Close


async def _sessions():
    return await get_state().entries()


async def _disconnect(conn_ids, by):
    """Ask the process holding each chosen socket to close it; returns how many were found."""
    state = get_state()
    layer = get_channel_layer()
    chosen = [info for info in await state.entries() if info["id"] in conn_ids]
    for info in chosen:
        message = {"type": "session.close", "conn": info["id"], "code": int(Close.KICKED), "by": by}
        await layer.send(info["channel"], message)
        await state.entry_drop(info["id"])
    return len(chosen)


@admin.register(LiveSession)
class LiveSessionAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if not self.has_change_permission(request):
                raise PermissionDenied
            conn_ids = set(request.POST.getlist("session"))
            if conn_ids:
                try:
                    closed = async_to_sync(_disconnect)(conn_ids, request.user.get_username())
                    self.message_user(request, f"Disconnected {closed} session(s).", messages.SUCCESS)
                except StateUnavailable:
                    self.message_user(request, "Redis is unavailable: nothing was disconnected.", messages.ERROR)
            else:
                self.message_user(request, "Choose at least one session.", messages.WARNING)
            return HttpResponseRedirect(request.get_full_path())
        error = None
        try:
            sessions = async_to_sync(_sessions)()
        except StateUnavailable:
            sessions, error = [], "Redis is unavailable: the list cannot be read."
        for info in sessions:
            info["since"] = datetime.fromtimestamp(info["since_ms"] / 1000, tz=timezone.get_current_timezone())
        sessions.sort(key=lambda info: info["since_ms"], reverse=True)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Live sessions",
            "sessions": sessions,
            "error": error,
            "can_disconnect": self.has_change_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/streams/livesession/change_list.html", context)
