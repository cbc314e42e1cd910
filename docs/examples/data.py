from fastapi import APIRouter, FastAPI
from sqlmodel import Field, SQLModel, col, select

from asgi_micro import MicroRouter, Service
from asgi_micro.data import Session


class TodoIn(SQLModel):
    title: str
    done: bool = False


class Todo(TodoIn, table=True):  # a table, and the reply model of the handlers below
    id: int | None = Field(default=None, primary_key=True)


service = Service("todos")  # its database: MICRO_DATABASE, else sqlite:///.micro/data.db
routes = APIRouter()
todos = MicroRouter("Todos")


@todos.rpc()  # POST /todos/add
async def add(req: TodoIn, session: Session) -> Todo:
    todo = Todo.model_validate(req)
    session.add(todo)
    await session.commit()  # nothing is kept that is not committed
    return todo


@routes.get("/todos")
async def open_todos(session: Session) -> list[Todo]:
    query = select(Todo).where(col(Todo.done).is_(False)).order_by(col(Todo.id))
    return list(await session.exec(query))


app = FastAPI(lifespan=service.lifespan)  # the tables are created at start
app.include_router(routes)
app.include_router(todos)
