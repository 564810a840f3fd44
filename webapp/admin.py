from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from webapp.models import User


@admin.register(User)
class OrchardUserAdmin(UserAdmin):
    list_display = ["username", "email", "role", "is_active", "is_staff"]
    list_filter = ["role", "is_active", "is_staff"]
    fieldsets = [*UserAdmin.fieldsets, ("Orchard", {"fields": ["role"]})]
