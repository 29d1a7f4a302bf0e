"""Admin forms: issue, rotate and edit tokens, and edit a user's limits.

Expiry is always a choice: a token never expires only when staff pick
"Never" (issue/rotate) or tick "Never expires" (edit).
"""

from datetime import datetime, time, timedelta

from django import forms
from django.contrib.admin import widgets as admin_widgets
from django.contrib.auth import get_user_model
from django.utils import timezone

from .models import MAX_EXPIRY_DAYS, NEVER, STREAM_CHOICES, ApiToken, UserLimits, normalise_streams

EXPIRY_CHOICES = [
    ("default", "Owner's default"),
    ("30", "30 days"),
    ("90", "90 days"),
    ("180", "180 days"),
    ("365", "1 year"),
    ("date", "On a date…"),
    ("never", "Never (not recommended)"),
]

GRACE_CHOICES = [
    ("0", "None: the old token stops at once (it leaked)"),
    ("3600", "1 hour"),
    ("86400", "24 hours"),
    ("604800", "7 days"),
    ("custom", "Custom…"),
]


class StreamsField(forms.TypedMultipleChoiceField):
    widget = forms.CheckboxSelectMultiple

    def __init__(self, **kwargs):
        super().__init__(choices=STREAM_CHOICES, **kwargs)

    def clean(self, value):
        return normalise_streams(super().clean(value))


def _end_of_day(day):
    """Expiry chosen as a date: the token works through that whole day (local time)."""
    return timezone.make_aware(datetime.combine(day + timedelta(days=1), time.min))


class ExpiryChoiceMixin:
    """`expires` (a preset, a date or never) -> `expires_in` / `expires_at` for the model."""

    def clean_expiry(self, cleaned, *, default_label):
        choice = cleaned.get("expires")
        if choice == "date":
            day = cleaned.get("expires_on")
            if day is None:
                self.add_error("expires_on", "Pick the last day the token works.")
            elif _end_of_day(day) <= timezone.now():
                self.add_error("expires_on", "The date must be today or later.")
            elif day > timezone.localdate() + timedelta(days=MAX_EXPIRY_DAYS):
                self.add_error("expires_on", f"At most {MAX_EXPIRY_DAYS} days ahead.")
            else:
                return {"expires_at": _end_of_day(day)}
            return {}
        if choice == "never":
            return {"expires_in": NEVER}
        if choice is None or choice == default_label:
            return {}
        return {"expires_in": timedelta(days=int(choice))}


class IssueTokenForm(ExpiryChoiceMixin, forms.Form):
    user = forms.ModelChoiceField(queryset=get_user_model().objects.filter(is_active=True), label="Owner")
    label = forms.CharField(max_length=100, help_text="What uses this token, e.g. “desk bridge” or “partner X”.")
    streams = StreamsField(required=False, help_text="Leave all unticked to use the owner's default streams.")
    expires = forms.ChoiceField(choices=EXPIRY_CHOICES, initial="default", label="Expires")
    expires_on = forms.DateField(required=False, label="Last day", widget=admin_widgets.AdminDateWidget)
    max_connections = forms.IntegerField(
        required=False, min_value=1, max_value=10_000, help_text="Leave empty for the owner's default."
    )

    def __init__(self, *args, admin_site=None, **kwargs):
        super().__init__(*args, **kwargs)
        if admin_site is not None:
            widget = admin_widgets.AutocompleteSelect(ApiToken._meta.get_field("user"), admin_site)
            widget.choices = self.fields["user"].choices
            self.fields["user"].widget = widget

    def clean(self):
        cleaned = super().clean()
        cleaned["expiry"] = self.clean_expiry(cleaned, default_label="default")
        return cleaned

    def issue(self):
        data = self.cleaned_data
        return ApiToken.issue(
            data["user"],
            label=data["label"],
            streams=data["streams"] or None,
            max_connections=data["max_connections"],
            **data["expiry"],
        )


class RotateTokenForm(ExpiryChoiceMixin, forms.Form):
    grace = forms.ChoiceField(
        choices=GRACE_CHOICES,
        initial="86400",
        label="Old token keeps working for",
        widget=forms.RadioSelect,
    )
    grace_minutes = forms.IntegerField(required=False, min_value=0, max_value=60 * 24 * 30, label="Custom (minutes)")
    expires = forms.ChoiceField(
        choices=[("same", "Same lifetime as the old token"), *EXPIRY_CHOICES[1:]],
        initial="same",
        label="New token expires",
    )
    expires_on = forms.DateField(required=False, label="Last day", widget=admin_widgets.AdminDateWidget)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("grace") == "custom":
            if cleaned.get("grace_minutes") is None:
                self.add_error("grace_minutes", "How many minutes should the old token keep working?")
            else:
                cleaned["grace_delta"] = timedelta(minutes=cleaned["grace_minutes"])
        elif cleaned.get("grace") is not None:
            cleaned["grace_delta"] = timedelta(seconds=int(cleaned["grace"]))
        cleaned["expiry"] = self.clean_expiry(cleaned, default_label="same")
        return cleaned

    def rotate(self, token):
        expiry = self.cleaned_data["expiry"]
        if "expires_at" in expiry:
            expires_in = expiry["expires_at"] - timezone.now()
        else:
            expires_in = expiry.get("expires_in")
        return token.rotate(self.cleaned_data["grace_delta"], expires_in=expires_in)


class ApiTokenChangeForm(forms.ModelForm):
    """Edit a token in place: label, streams, expiry, connection limit."""

    streams = StreamsField(help_text="Removing a stream closes this token's sockets on it at once.")
    never_expires = forms.BooleanField(
        required=False, help_text="Tick to let the token work with no end date (not recommended)."
    )

    class Meta:
        model = ApiToken
        fields = ["label", "streams", "expires_at", "never_expires", "max_connections"]
        help_texts = {
            "expires_at": "Moving it to the past closes open sockets with 4005.",
            "max_connections": "Lowering it closes the newest sockets over the new limit.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields["never_expires"].initial = self.instance.expires_at is None

    def clean(self):
        cleaned = super().clean()
        old, new = self.instance.expires_at, cleaned.get("expires_at")
        if old is not None and new is not None and abs(new - old) < timedelta(seconds=1):
            # The widget shows whole seconds: an untouched field is no change.
            cleaned["expires_at"] = old
        if cleaned.get("never_expires"):
            cleaned["expires_at"] = None
        elif cleaned.get("expires_at") is None and "expires_at" not in self.errors:
            self.add_error("expires_at", "Choose an expiry, or tick “Never expires”.")
        return cleaned


class UserLimitsForm(forms.ModelForm):
    default_token_streams = StreamsField(label="Default streams for new tokens")

    class Meta:
        model = UserLimits
        fields = [
            "max_connections",
            "default_token_streams",
            "default_token_max_connections",
            "default_token_expiry_days",
        ]
