"""Staff manage tokens and limits here.

The plaintext of a token is rendered exactly once, into the response to the
POST that created it (issue or rotate): never into a redirect, a URL, the
messages framework (stored in cookies or sessions), the admin log or a later
page. That response is marked `no-store`.
"""

from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import Count, Q
from django.db.models.functions import Cast
from django.http import Http404, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe

from stocktracker.lib import keys

from .forms import ApiTokenChangeForm, IssueTokenForm, RotateTokenForm, UserLimitsForm
from .models import STATUSES, STREAM_CHOICES, ApiToken, TokenStateError, TokenUsage, UserLimits

User = get_user_model()


def live_counts(token_ids):
    """{token_id: open sockets} for a page of tokens in one shared-state round
    trip; None for each when shared state is unreachable."""
    from stocktracker.lib.state import StateUnavailable

    from .signals import run_on_state

    token_ids = list(token_ids)
    if not token_ids:
        return {}
    names = [keys.token(token_id) for token_id in token_ids]
    try:
        counts = run_on_state(lambda state: state.lease_counts(names))
    except StateUnavailable:
        return dict.fromkeys(token_ids)
    return dict(zip(token_ids, counts, strict=True))


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [(status, status.capitalize()) for status in STATUSES]

    def queryset(self, request, queryset):
        if self.value() in STATUSES:
            return queryset.filter(ApiToken.objects.status_q(self.value()))
        return queryset


class UnusedFilter(admin.SimpleListFilter):
    title = "use"
    parameter_name = "unused"

    def lookups(self, request, model_admin):
        return [("yes", f"Unused for {settings.TOKEN_UNUSED_DAYS}+ days")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(ApiToken.objects.unused_q())
        return queryset


USAGE_DAYS = 14  # rows on the token's admin page


class StreamFilter(admin.SimpleListFilter):
    title = "stream"
    parameter_name = "stream"

    def lookups(self, request, model_admin):
        return STREAM_CHOICES

    def queryset(self, request, queryset):
        stream = self.value()
        if stream not in dict(STREAM_CHOICES):
            return queryset
        if connection.features.supports_json_field_contains:
            return queryset.filter(streams__contains=[stream])
        # SQLite (embedded mode): match the JSON text; stream names are plain words.
        from django.db.models import TextField

        return queryset.alias(streams_text=Cast("streams", TextField())).filter(streams_text__contains=f'"{stream}"')


def _one_time_response(request, admin_site, token, plaintext, *, title, old_token=None):
    context = {
        **admin_site.each_context(request),
        "title": title,
        "opts": ApiToken._meta,
        "token": token,
        "plaintext": plaintext,
        "old_token": old_token,
        "change_url": reverse("admin:accounts_apitoken_change", args=[token.pk]),
    }
    response = TemplateResponse(request, "admin/accounts/apitoken/show_once.html", context)
    response["Cache-Control"] = "no-store, max-age=0"
    response["Referrer-Policy"] = "no-referrer"
    return response


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenChangeForm
    change_form_template = "admin/accounts/apitoken/change_form.html"
    list_display = [
        "prefix",
        "label",
        "owner",
        "streams_display",
        "expires_display",
        "last_used_display",
        "live_connections",
        "status_display",
    ]
    list_display_links = ["prefix", "label"]
    list_select_related = ["user"]
    list_filter = [StatusFilter, UnusedFilter, StreamFilter, ("user", admin.RelatedOnlyFieldListFilter), "created_at"]
    search_fields = ["prefix", "label", "user__username", "user__email"]
    search_help_text = "Lookup prefix (stk_ + 8 characters), label, owner's username or e-mail."
    list_per_page = 50
    actions = ["revoke_selected", "extend_30_days", "extend_90_days"]
    readonly_fields = [
        "prefix",
        "owner",
        "status_display",
        "live_connections",
        "created_at",
        "last_used_at",
        "last_used_ip",
        "revoked_at",
        "retires_at",
        "replaced_by_link",
        "replaces_link",
        "usage_table",
    ]
    fieldsets = [
        (None, {"fields": ["prefix", "owner", "label", "status_display", "live_connections"]}),
        ("Access", {"fields": ["streams", "max_connections", "expires_at", "never_expires"]}),
        (
            "History",
            {
                "fields": [
                    "created_at",
                    "last_used_at",
                    "last_used_ip",
                    "revoked_at",
                    "retires_at",
                    "replaced_by_link",
                    "replaces_link",
                ]
            },
        ),
        (f"Usage, last {USAGE_DAYS} days", {"fields": ["usage_table"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).with_status()

    # --- list ------------------------------------------------------------------------

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        page = list(changelist.result_list)  # evaluates (and caches) the page once
        counts = live_counts(token.pk for token in page)
        for token in page:
            token.live_count = counts.get(token.pk)
        return changelist

    @admin.display(description="owner", ordering="user__username")
    def owner(self, token):
        url = reverse("admin:auth_user_change", args=[token.user_id])
        return format_html('<a href="{}">{}</a>', url, token.user.get_username())

    @admin.display(description="streams")
    def streams_display(self, token):
        return ", ".join(token.streams)

    @admin.display(description="expires", ordering="expires_at")
    def expires_display(self, token):
        if token.retires_at is not None and (token.expires_at is None or token.retires_at < token.expires_at):
            return format_html("{} <small>(rotated)</small>", _when(token.retires_at))
        return _when(token.expires_at) if token.expires_at else "never"

    @admin.display(description="last used", ordering="last_used_at")
    def last_used_display(self, token):
        flag = ""
        if token.is_unused():
            flag = format_html(
                '<br><strong class="unused" style="color:#b26a00">unused {}+ days</strong>', settings.TOKEN_UNUSED_DAYS
            )
        if token.last_used_at is None:
            return format_html("never{}", flag)
        return format_html("{}<br><small>{}</small>{}", _when(token.last_used_at), token.last_used_ip or "", flag)

    @admin.display(description="usage per day")
    def usage_table(self, token):
        if token.pk is None:
            return "—"
        since = timezone.localdate() - timedelta(days=USAGE_DAYS - 1)
        rows = list(TokenUsage.objects.filter(token=token, day__gte=since).order_by("-day"))
        if not rows:
            return "No use recorded in this period."
        head = (
            "<tr><th>day</th><th>connections opened</th><th>peak concurrent</th>"
            "<th>messages delivered</th><th>bytes delivered</th><th>rejections</th></tr>"
        )
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (u.day.isoformat(), u.connections, u.peak_concurrent, u.messages, filesizeformat(u.bytes), u.rejections)
                for u in rows
            ),
        )
        table = '<table class="token-usage"><thead>{}</thead><tbody>{}</tbody></table>'
        return format_html(table, mark_safe(head), body)  # noqa: S308 - head is a constant

    @admin.display(description="live")
    def live_connections(self, token):
        count = getattr(token, "live_count", "missing")
        if count == "missing":  # change page: one token
            count = live_counts([token.pk])[token.pk]
        return "?" if count is None else count

    @admin.display(description="status", ordering="status")
    def status_display(self, token):
        status = getattr(token, "status", None) or token.status_at()
        colour = {"active": "#2e7d32", "expiring": "#b26a00", "expired": "#757575", "revoked": "#c62828"}[status]
        return format_html('<strong style="color:{}">{}</strong>', colour, status)

    @admin.display(description="replaced by")
    def replaced_by_link(self, token):
        if token.replaced_by_id is None:
            return "—"
        url = reverse("admin:accounts_apitoken_change", args=[token.replaced_by_id])
        return format_html('<a href="{}">{}</a>', url, token.replaced_by)

    @admin.display(description="replaces")
    def replaces_link(self, token):
        old = token.replaces.first()
        if old is None:
            return "—"
        return format_html('<a href="{}">{}</a>', reverse("admin:accounts_apitoken_change", args=[old.pk]), old)

    # --- bulk actions ------------------------------------------------------------------

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_selected(self, request, queryset):
        targets = list(queryset.filter(revoked_at__isnull=True).select_related("user"))
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Revoke tokens",
                "opts": self.opts,
                "tokens": targets,
                "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/accounts/apitoken/revoke_selected.html", context)
        at = timezone.now()
        for token in targets:
            token.revoke(at=at)
            self.log_change(request, token, "Revoked.")
        self.message_user(
            request, f"Revoked {len(targets)} token(s); their sockets are being closed.", messages.SUCCESS
        )
        return None

    def _extend(self, request, queryset, days):
        extended = 0
        now = timezone.now()
        for token in queryset.filter(revoked_at__isnull=True, expires_at__isnull=False).select_related("user"):
            token.set_expiry(max(token.expires_at, now) + timedelta(days=days))
            self.log_change(request, token, f"Extended expiry by {days} days.")
            extended += 1
        self.message_user(
            request, f"Extended {extended} token(s) by {days} days (tokens that never expire are unchanged)."
        )

    @admin.action(description="Extend expiry by 30 days", permissions=["change"])
    def extend_30_days(self, request, queryset):
        self._extend(request, queryset, 30)

    @admin.action(description="Extend expiry by 90 days", permissions=["change"])
    def extend_90_days(self, request, queryset):
        self._extend(request, queryset, 90)

    # --- pages: issue, rotate, revoke ----------------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/rotate/", wrap(self.rotate_view), name="accounts_apitoken_rotate"),
            path("<path:object_id>/revoke/", wrap(self.revoke_view), name="accounts_apitoken_revoke"),
            *super().get_urls(),
        ]

    def _form_page(self, request, form, *, title, template, token=None, fieldsets=None):
        fields = list(form.fields)
        adminform = helpers.AdminForm(form, fieldsets or [(None, {"fields": fields})], {})
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "adminform": adminform,
            "form": form,
            "errors": helpers.AdminErrorList(form, []),
            "media": self.media + adminform.media,
            "original": token,
            "token": token,
        }
        return TemplateResponse(request, template, context)

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        initial = {}
        if "user" in request.GET:
            initial["user"] = request.GET["user"]
        form = IssueTokenForm(request.POST or None, initial=initial, admin_site=self.admin_site)
        if request.method == "POST" and form.is_valid():
            token, plaintext = form.issue()
            self.log_addition(request, token, "Issued.")
            return _one_time_response(request, self.admin_site, token, plaintext, title="Token created")
        return self._form_page(request, form, title="Issue an API token", template="admin/accounts/apitoken/issue.html")

    def _get_token(self, request, object_id):
        token = self.get_object(request, unquote(object_id))
        if token is None:
            raise Http404("No such token.")
        if not self.has_change_permission(request, token):
            raise PermissionDenied
        return token

    def rotate_view(self, request, object_id):
        token = self._get_token(request, object_id)
        form = RotateTokenForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                new, plaintext = form.rotate(token)
            except TokenStateError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return HttpResponseRedirect(reverse("admin:accounts_apitoken_change", args=[token.pk]))
            self.log_change(
                request, token, f"Rotated; retires at {token.retires_at.isoformat()}; replaced by {new.prefix}."
            )
            self.log_addition(request, new, f"Issued by rotating {token.prefix}.")
            return _one_time_response(request, self.admin_site, new, plaintext, title="Token rotated", old_token=token)
        return self._form_page(
            request, form, title=f"Rotate {token}", template="admin/accounts/apitoken/rotate.html", token=token
        )

    def revoke_view(self, request, object_id):
        token = self._get_token(request, object_id)
        change_url = reverse("admin:accounts_apitoken_change", args=[token.pk])
        if request.method == "POST":
            token.revoke()
            self.log_change(request, token, "Revoked.")
            self.message_user(request, f"Revoked {token}; its sockets are being closed.", messages.SUCCESS)
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Revoke {token}?",
            "opts": self.opts,
            "token": token,
            "original": token,
            "change_url": change_url,
        }
        return TemplateResponse(request, "admin/accounts/apitoken/revoke.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "rotate_url": reverse("admin:accounts_apitoken_rotate", args=[object_id]),
            "revoke_url": reverse("admin:accounts_apitoken_revoke", args=[object_id]),
        }
        return super().change_view(request, object_id, form_url, extra_context)


def _when(value):
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M")


# --- users and their limits ---------------------------------------------------------------


class UserLimitsInline(admin.StackedInline):
    model = UserLimits
    form = UserLimitsForm
    can_delete = False
    extra = 0
    min_num = 1
    max_num = 1
    verbose_name = verbose_name_plural = "connection limits and defaults for new tokens"


admin.site.unregister(User)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    inlines = [UserLimitsInline]
    list_display = [*BaseUserAdmin.list_display, "connection_cap", "tokens_link"]
    list_select_related = ["limits"]

    def get_inline_instances(self, request, obj=None):
        # A new user gets a limits row with the defaults when saved; edit it afterwards.
        return super().get_inline_instances(request, obj) if obj is not None else []

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                usable_tokens=Count(
                    "api_tokens", filter=Q(api_tokens__revoked_at__isnull=True, api_tokens__retires_at__isnull=True)
                )
            )
        )

    @admin.display(description="connection cap", ordering="limits__max_connections")
    def connection_cap(self, user):
        try:
            return user.limits.max_connections
        except UserLimits.DoesNotExist:
            return "default"

    @admin.display(description="tokens", ordering="usable_tokens")
    def tokens_link(self, user):
        url = reverse("admin:accounts_apitoken_changelist") + "?" + urlencode({"user__id__exact": user.pk})
        return format_html('<a href="{}">{}</a>', url, user.usable_tokens)
