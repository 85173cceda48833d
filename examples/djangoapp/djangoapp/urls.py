from django.urls import path
from polls import views

urlpatterns = [
    path("polls/", views.questions),
    path("health", views.health),
]
